"""Sampling throughput on Qwen2.5-14B shapes: batch 32, 32-token prompts, 128 new tokens
(temperature 1, top-p 1); the PyTorch peer's case `gen` (transformers generate).

Usage: python bench/generate.py [--batch 32 --prompt 32 --new 128 --tiny]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import bench_config, random_weights, report, timeit  # noqa: E402
from emjax.model import sampling as S  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=32)
p.add_argument("--prompt", type=int, default=32)
p.add_argument("--new", type=int, default=128)
p.add_argument("--unroll", type=int, default=1, help="layer-scan unroll factor in decode")
p.add_argument("--decode-attention", default="auto", choices=["auto", "xla", "pallas"])
p.add_argument("--tiny", action="store_true")
a = p.parse_args()

cfg = bench_config(a.tiny)
w = random_weights(cfg)
prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (a.batch, a.prompt)).tolist()
seed = [0]


def run():
    seed[0] += 1  # fresh samples each time; no stop ids, so every row makes `new` tokens
    out = S.generate(w, cfg, prompts, max_new_tokens=a.new, temperature=1.0, top_p=1.0, seed=seed[0],
                     layer_unroll=a.unroll, decode_attention=a.decode_attention)
    assert all(len(o) == a.new for o in out)


s = timeit(run, warm=1, reps=3)
report("qwen14b_generate_b32_new128", s, a.batch * a.new, GB=a.batch, P=a.prompt, NEW=a.new, unroll=a.unroll, decode_attention=a.decode_attention,
       xla_flags=os.environ.get("XLA_FLAGS", ""))
