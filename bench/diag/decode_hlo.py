"""Diagnostic: compile one decode step of a 14B-shaped model from abstract weights and write the
optimised HLO; time a decode-sized matmul read directly vs through a dynamic slice of a stack."""
import os, sys, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import jax, jax.numpy as jnp
from emjax.config import preset
from emjax.params import abstract_weights
from emjax import sampling as S, model as M

cfg = preset("qwen2.5-14b-instruct")
B, Sl = 32, 160
if "--no-hlo" in sys.argv:
    pass
else:
  aw = abstract_weights(cfg)
  B, Sl = 32, 160
  cache = S.KVCache(k=jax.ShapeDtypeStruct((cfg.n_layers, B, Sl, 8, 128), jnp.bfloat16),
                    v=jax.ShapeDtypeStruct((cfg.n_layers, B, Sl, 8, 128), jnp.bfloat16),
                    pos=jax.ShapeDtypeStruct((B, Sl), jnp.int32), valid=jax.ShapeDtypeStruct((B, Sl), bool))
  def step(w, x, pos, cache, slot):
      return S._layers_with_cache(w, cfg, x, pos, cache, slot, None)
  lowered = jax.jit(step).lower(aw, jax.ShapeDtypeStruct((B, 1, 5120), jnp.bfloat16),
                                jax.ShapeDtypeStruct((B, 1), jnp.int32), cache, jax.ShapeDtypeStruct((), jnp.int32))
  txt = lowered.compile().as_text()
  out = os.environ.get("OUT", ".")
  open(os.path.join(out, "decode_step_hlo.txt"), "w").write(txt)
  for pat in ["dynamic-slice", "__cublas", "triton_gemm", "copy(", "custom-call", "fusion("]:
      print(pat, txt.count(pat))

# matmul microbench
L, D, F = 8, 5120, 13824
stack = jax.random.normal(jax.random.PRNGKey(0), (L, D, F), jnp.bfloat16)
x = jax.random.normal(jax.random.PRNGKey(1), (B, D), jnp.bfloat16)
def t(f, *a):
    f(*a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(20): r = f(*a)
    r.block_until_ready()
    return (time.perf_counter() - t0) / 20
direct = jax.jit(lambda x, w: x @ w)
w0 = stack[3]
print("direct  ms", 1e3 * t(direct, x, w0), "GB/s", D * F * 2 / t(direct, x, w0) / 1e9)
dyn = jax.jit(lambda x, s, i: x @ s[i])
print("dynslice ms", 1e3 * t(dyn, x, stack, jnp.int32(3)))
def loop(x, s):
    def body(c, w):
        return c, (x @ w)[:1]
    return jax.lax.scan(body, x, s)[1]
print("scan-xs per layer ms", 1e3 * t(jax.jit(loop), x, stack) / L)
def loop2(x, s):
    def body(c, i):
        return c, (x @ s[i])[:1]
    return jax.lax.scan(body, x, jnp.arange(L))[1]
print("scan-idx per layer ms", 1e3 * t(jax.jit(loop2), x, stack) / L)
