"""16-norm loss sweep at the middle layer on Qwen2.5-14B shapes: vmapped (one compiled call, prefix
shared) vs a loop of full forwards; the PyTorch peer's case `sweep`.

Usage: python bench/sweep.py [--norms 16 --chunk 0 --tiny]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import bench_config, random_weights, report, timeit  # noqa: E402
from emjax.interventions import Interventions, init_steering  # noqa: E402
from emjax.interventions import arithmetic as A  # noqa: E402
from emjax.metrics import sweeps as SW  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--norms", type=int, default=16)
p.add_argument("--batch", type=int, default=8)
p.add_argument("--seq", type=int, default=256)
p.add_argument("--chunk", type=int, default=0, help="versions per vmap chunk (0: all at once)")
p.add_argument("--loss-chunk", type=int, default=64, help="sequence chunk of the CE (bounds logits memory)")
p.add_argument("--attention", default="xla", choices=["xla", "cudnn"])
p.add_argument("--loop", action="store_true", help="also time the loop of full forwards")
p.add_argument("--tiny", action="store_true")
p.add_argument("--weights-seed", type=int, default=0)
a = p.parse_args()

cfg = bench_config(a.tiny)
w = random_weights(cfg, seed=a.weights_seed)
B, T, K = a.batch, a.seq, a.norms
tokens = jax.random.randint(jax.random.PRNGKey(1), (B, T), 0, cfg.vocab_size)
mask = jnp.ones((B, T), bool)
targets = jnp.roll(tokens, -1, axis=-1)
sv = init_steering(cfg, layers=(cfg.middle_layer,), alpha=1.0)
sv = sv.replace(vectors=jax.random.normal(jax.random.PRNGKey(2), sv.vectors.shape))
stacked = A.rescale_to_norms(Interventions(steer=sv), np.arange(1, K + 1, dtype=np.float32))

run = lambda: np.asarray(SW.sweep_losses(stacked, w, cfg, tokens, mask, targets=targets, loss_mask=mask,
                                         chunk=a.chunk or None, loss_chunk=a.loss_chunk or None,
                                         attention=a.attention))
s = timeit(run, warm=1, reps=5)
report("qwen14b_norm_sweep16_loss", s, K * B * T, K=K, B=B, T=T, chunk=a.chunk or None, loss_chunk=a.loss_chunk, attention=a.attention,
       impl_detail="vmap+prefix")
if a.loop:
    s = timeit(lambda: SW.loop_losses(stacked, w, cfg, tokens, mask, targets=targets, loss_mask=mask), warm=1, reps=3)
    report("qwen14b_norm_sweep16_loss_loop", s, K * B * T, K=K, B=B, T=T, impl_detail="python loop of full forwards")
