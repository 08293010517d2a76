"""GPU check of the Pallas decode attention (compiled, not interpreted) against `model.attend`:
fresh random caches and masks (random holes, and ragged rows whose blocks outside their bounds hold
NaN, which the kernel must not read), float32 and bfloat16, Qwen2.5-14B heads and Gemma-2 heads
with soft-capping, the bounded kernel and the one reading every block ("pallas_full"); then greedy
sampling with either kernel equals sampling with XLA attention on small random float32 models of
both families, ragged prompts decoding across block boundaries.

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
INTERPRET = jax.default_backend() != "gpu"  # off GPU (a dry run) the kernel is interpreted
print(f"backend {jax.default_backend()}, devices {jax.devices()}")
for name in ("qwen2.5-14b-instruct", "gemma-2-9b-it"):
    cfg = preset(name)
    for dtype, tol in ((jnp.float32, 1e-5), (jnp.bfloat16, 1e-2)):
        for seed in range(3):
            rng = np.random.default_rng(seed)
            b, s, layers = 8, DA.BLOCK_S * (2 + seed), 4
            shape = (layers, b, s, cfg.n_kv_heads, cfg.head_dim)
            k_all = jnp.asarray(rng.normal(size=shape) * 2, dtype)
            v_all = jnp.asarray(rng.normal(size=shape), dtype)
            q = jnp.asarray(rng.normal(size=(b, 1, cfg.n_heads, cfg.head_dim)) * 2, dtype)
            holes = jnp.asarray(rng.random((b, 1, s)) < 0.7).at[0].set(False)
            # ragged decode masks: row r attends to [lo, hi) (left padding, lengths inside a block,
            # at a block boundary, one block, everything), NaN values outside its blocks
            lo = rng.integers(0, s, b)
            lo[:4] = [0, 5, DA.BLOCK_S, 0]
            hi = np.minimum(s, lo + 1 + rng.integers(0, s, b))
            hi[:4] = [1, DA.BLOCK_S, 2 * DA.BLOCK_S, s]
            slots = np.arange(s)
            ragged = jnp.asarray((slots >= lo[:, None]) & (slots < hi[:, None]))[:, None]
            for kind, mask in (("holes", holes), ("ragged", ragged)):
                layer = int(rng.integers(layers))
                bounds = np.asarray(DA.block_bounds(mask[:, 0]))
                block = np.arange(s) // DA.BLOCK_S
                outside = jnp.asarray((block < bounds[:, :1]) | (block >= bounds[:, 1:]))[None, :, :, None, None]
                with jax.default_matmul_precision("highest"):  # a float32 reference, not tf32
                    want = M.attend(q.astype(jnp.float32), jnp.where(outside, 0, k_all)[layer].astype(jnp.float32),
                                    jnp.where(outside, 0, v_all)[layer].astype(jnp.float32), mask, cfg)
                for full in (False, True):
                    kv = (k_all, v_all) if full else (jnp.where(outside, jnp.nan, k_all),
                                                       jnp.where(outside, jnp.nan, v_all))
                    got = DA.attend_one_query(q, *kv, jnp.int32(layer), mask, cfg, INTERPRET, full=full).astype(jnp.float32)
                    if full:  # the old kernel reads everything: compare with the cache as it is
                        with jax.default_matmul_precision("highest"):
                            want_full = M.attend(q.astype(jnp.float32), k_all[layer].astype(jnp.float32),
                                                 v_all[layer].astype(jnp.float32), mask, cfg)
                    ref = want_full if full else want
                    rel = float(jnp.linalg.norm(got - ref) / jnp.linalg.norm(ref))
                    finite = bool(jnp.all(jnp.isfinite(got)))
                    ok &= finite and rel < tol
                    print(f"{name} {jnp.dtype(dtype).name} seed {seed} S={s} {kind} "
                          f"{'full' if full else 'bounded'}: rel err {rel:.2e} (tol {tol:g}), finite {finite}")

for name in ("qwen2.5-0.5b-instruct", "gemma-2-9b-it"):
    cfg = preset(name).replace(n_layers=3, vocab_size=512)
    if cfg.attn_softcap is not None:
        cfg = cfg.replace(d_model=256, ffn_dim=512, sliding_window=8)
    w = random_weights(cfg, jnp.float32, seed=1)
    w = jax.tree.map(lambda x: x * 5, w)  # larger logits: sharper, less tie-prone argmax
    prompts = np.random.default_rng(2).integers(1, cfg.vocab_size, (4, 12)).tolist()
    prompts[1] = prompts[1][:5]
    prompts[2] = prompts[2] * 7  # 84 tokens: the others carry more than a block of left padding
    kw = dict(max_new_tokens=100, temperature=0.0)
    a = S.generate(w, cfg, prompts, decode_attention="xla", **kw)
    for kernel in ("pallas", "pallas_full"):
        same = S.generate(w, cfg, prompts, decode_attention=kernel, **kw) == a
        ok &= same
        print(f"greedy {name} (3 layers, fp32): {kernel} == xla for 4 ragged rows x 100 tokens: {same}")
print("ALL OK" if ok else "FAILED")
