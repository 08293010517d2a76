"""GPU check of the Pallas decode attention (compiled, not interpreted) against `model.attend`:
fresh random caches and masks, float32 and bfloat16, Qwen2.5-14B heads and Gemma-2 heads with
soft-capping; then greedy sampling with the kernel equals sampling with XLA attention on small
random float32 models of both families.

Usage: python bench/diag/check_decode_attention.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import random_weights  # noqa: E402
from emjax.model import decode_attention as DA  # noqa: E402
from emjax import model as M  # noqa: E402
from emjax.model import sampling as S  # noqa: E402
from emjax.model.config import preset  # noqa: E402

ok = True
for name in ("qwen2.5-14b-instruct", "gemma-2-9b-it"):
    cfg = preset(name)
    for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 1e-2)):
        for seed in range(3):
            rng = np.random.default_rng(seed)
            b, s, layers = 8, DA.BLOCK_S * (1 + seed), 4
            shape = (layers, b, s, cfg.n_kv_heads, cfg.head_dim)
            k_all = jnp.asarray(rng.normal(size=shape) * 2, dtype)
            v_all = jnp.asarray(rng.normal(size=shape), dtype)
            q = jnp.asarray(rng.normal(size=(b, 1, cfg.n_heads, cfg.head_dim)) * 2, dtype)
            mask = jnp.asarray(rng.random((b, 1, s)) < 0.7).at[0].set(False)
            layer = int(rng.integers(layers))
            got = DA.attend_one_query(q, k_all, v_all, jnp.int32(layer), mask, cfg).astype(jnp.float32)
            with jax.default_matmul_precision("highest"):  # a float32 reference, not tf32
                want = M.attend(q.astype(jnp.float32), k_all[layer].astype(jnp.float32),
                                v_all[layer].astype(jnp.float32), mask, cfg)
            rel = float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))
            finite = bool(jnp.all(jnp.isfinite(got)))
            ok &= finite and rel < tol
            print(f"{name} {jnp.dtype(dtype).name} seed {seed} S={s}: rel err {rel:.2e} (tol {tol:g}), finite {finite}")

for name in ("qwen2.5-0.5b-instruct", "gemma-2-9b-it"):
    cfg = preset(name).replace(n_layers=3, vocab_size=512)
    if cfg.attn_softcap is not None:
        cfg = cfg.replace(d_model=256, ffn_dim=512, sliding_window=8)
    w = random_weights(cfg, jnp.float32, seed=1)
    w = jax.tree.map(lambda x: x * 5, w)  # larger logits: sharper, less tie-prone argmax
    prompts = np.random.default_rng(2).integers(1, cfg.vocab_size, (4, 12)).tolist()
    prompts[1] = prompts[1][:5]
    kw = dict(max_new_tokens=40, temperature=0.0)
    a = S.generate(w, cfg, prompts, decode_attention="xla", **kw)
    b = S.generate(w, cfg, prompts, decode_attention="pallas", **kw)
    same = a == b
    ok &= same
    print(f"greedy {name} (3 layers, fp32): pallas == xla for 4 rows x 40 tokens: {same}")
print("ALL OK" if ok else "FAILED")
