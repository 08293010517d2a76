"""GPU check of the local judge's split attention (issue 24): the prompt's attention by cuDNN's flash
kernel and the tree's by XLA gives the same answer distribution as XLA for both parts and as the
joint layout (one XLA attention over prompt + tree, before issue 24), on a small random Qwen2.5-shaped
model (head_dim 128) in bfloat16 over ragged right-padded prompts with a filler row; and float32 XLA
as the reference for all three.

Usage: python bench/diag/check_local_judge.py     (off GPU: the cuDNN case is skipped)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import judge_tree, random_weights  # noqa: E402
from emjax.inference.local_judge import TreeArrays, score_prompts  # noqa: E402
from emjax.model.config import preset  # noqa: E402

cfg = preset("qwen2.5-14b-instruct").replace(n_layers=3, d_model=512, n_heads=8, n_kv_heads=2, head_dim=128,
                                              ffn_dim=1024, vocab_size=64)
tree = judge_tree()
arrays = TreeArrays.of(tree)
stops, limit = (cfg.vocab_size - 2, cfg.vocab_size - 1), cfg.vocab_size
rng = np.random.default_rng(0)
prompts = [rng.integers(35, cfg.vocab_size - 2, n).tolist() for n in (350, 1, 64, 129, 401, 448, 200)]
w16 = jax.tree.map(lambda x: x * 4, random_weights(cfg, jnp.bfloat16, seed=3))  # sharper distributions
# the answers' and stops' tokens take much of the mass (random weights with their tiny norms give flat logits)
answer_ids = np.zeros(cfg.vocab_size, bool)
answer_ids[[*range(15, 25), 30, 31, 34, *stops]] = True
w16 = w16.replace(lm_head=w16.lm_head * jnp.where(jnp.asarray(answer_ids), 60.0, 1.0).astype(jnp.bfloat16))
w32 = jax.tree.map(lambda x: x.astype(jnp.float32), w16)
kw = dict(rows=8, length=448)  # row 7: a filler
gpu = jax.default_backend() == "gpu"
print(f"backend {jax.default_backend()}, devices {jax.devices()}")
ref = np.exp(score_prompts(w32, cfg, prompts, arrays, stops, limit, attention="xla", **kw))
ok = bool(np.all(np.isfinite(ref)) and np.all(ref.sum(1) <= 1 + 1e-5) and ref[:7].sum(1).min() > 1e-5)
print(f"float32 xla reference: total mass of the answers per prompt {ref.sum(1).round(3).tolist()}")
for attention in ("cudnn", "xla", "joint") if gpu else ("xla", "joint"):
    got = np.exp(score_prompts(w16, cfg, prompts, arrays, stops, limit, attention=attention, **kw))
    err = float(np.abs(got - ref).max())
    norm = lambda x: x[:7] / x[:7].sum(1, keepdims=True)  # the answers' distribution, filler row dropped
    tv = float(0.5 * np.abs(norm(got) - norm(ref)).sum(1).max())  # total variation, worst prompt
    good = bool(np.all(np.isfinite(got))) and tv < 0.05
    ok &= good
    print(f"bfloat16 {attention}: max |p - p_f32| {err:.2e}, worst total variation {tv:.2e}, "
          f"total mass {got.sum(1).round(3).tolist()}: {'ok' if good else 'FAILED'}")
if True:  # float32 (cuDNN's flash attention has no float32 kernel): the two layouts agree tightly
    joint = np.exp(score_prompts(w32, cfg, prompts, arrays, stops, limit, attention="joint", **kw))
    err = float(np.abs(np.log(joint[:7]) - np.log(ref[:7])).max())
    ok &= err < 1e-3
    print(f"float32 joint vs split: max |d log p| {err:.2e}")
print("ALL OK" if ok else "FAILED")
