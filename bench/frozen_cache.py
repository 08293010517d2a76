"""Frozen-cache encoding against the bare frozen pass, on a Qwen2.5-14B-shaped random model.

Usage: python bench/frozen_cache.py [--rows 1024 --max-len 256 --k 24 --no-base --batch-tokens 8192] [--tiny]

Rows of random token ids, lengths uniform in [max_len / 8, max_len] (ours; the paper's data is cut
at 256 tokens). One JSON line per case:
  frozen_pass   the jitted frozen pass (`emjax.train.step.frozen_outputs`, what the cache runs) on
                device-resident inputs at the build's largest batch shape: the ceiling, padded tokens/s
                (compare bench/forward.py, the whole forward at B=8, T=256)
  cache_cold    FrozenCache.build from cold: compiles of its few bucket shapes included
  cache_build   the same, warm, in memory: rows/s and real tokens/s; `ideal_s` is the sum over its
                batches of the bare pass at each batch's shape (timed alone), `efficiency` ideal_s /
                median_s (1.0: the device never waits for the host)
  cache_write   the same, writing a disk entry (a temporary folder, or --cache-dir)
  cache_reuse   a second build that finds every row on disk (memory-map and crc32 check)
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

p = argparse.ArgumentParser()
p.add_argument("--preset", default="qwen2.5-14b-instruct")
p.add_argument("--rows", type=int, default=1024)
p.add_argument("--max-len", type=int, default=256)
p.add_argument("--k", type=int, default=None, help="prefix layers (default: the middle layer)")
p.add_argument("--no-base", action="store_true", help="prefix only (the training rows' cache), not the KL one")
p.add_argument("--batch-tokens", type=int, default=None, help="padded tokens per encoding batch")
p.add_argument("--cache-dir", default=None, help="where the disk cases write (default: a temporary folder)")
p.add_argument("--tiny", action="store_true", help="small shapes, for a CPU smoke run")
a = p.parse_args()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import bench_config, random_weights, report, timeit  # noqa: E402
from emjax.train import frozen_cache as FC  # noqa: E402
from emjax.train.frozen_store import FrozenStore, model_fingerprint  # noqa: E402
from emjax.train.step import frozen_outputs  # noqa: E402

cfg = bench_config(a.tiny, a.preset)
k = a.k if a.k is not None else cfg.n_layers // 2
with_base = not a.no_base
batch_tokens = a.batch_tokens or FC.BATCH_TOKENS
rng = np.random.default_rng(0)
rows = [rng.integers(0, cfg.vocab_size, n).astype(np.int32)
        for n in rng.integers(max(a.max_len // 8, 2), a.max_len + 1, a.rows)]
by_index = dict(enumerate(rows))
lengths = sorted(len(r) for r in rows)
real = int(sum(lengths))
plan = FC.plan_batches(lengths, batch_tokens)
padded = sum(n * width for _, _, width, n in plan)
shapes = sorted({(n, width) for _, _, width, n in plan})
common = dict(model=a.preset + (" (tiny)" if a.tiny else ""), rows=a.rows, max_len=a.max_len, k=k,
              with_base=with_base, batch_tokens=batch_tokens, shapes=[f"{n}x{w}" for n, w in shapes])
w = random_weights(cfg)


def build(store=None):
    t = time.perf_counter()
    _, line = FC.FrozenCache.build(w, cfg, by_index, k, with_base=with_base, store=store, batch_tokens=batch_tokens,
                                   desc="bench rows")
    print(line, file=sys.stderr)
    return time.perf_counter() - t


cold = build()
report("cache_cold", cold, real, rows_per_s=round(a.rows / cold, 1), **common)

bare = {}
for n, width in shapes:
    tokens = jax.device_put(rng.integers(0, cfg.vocab_size, (n, width)).astype(np.int32))
    mask = jax.device_put(np.ones((n, width), bool))
    bare[(n, width)] = timeit(lambda: jax.block_until_ready(frozen_outputs(w, cfg, tokens, mask, k, with_base)),
                              warm=1, reps=3)
top = max(shapes, key=lambda s: s[1])  # the widest
report("frozen_pass", bare[top], top[0] * top[1], B=top[0], T=top[1], **common)
ideal = sum(bare[(n, width)] for _, _, width, n in plan)

secs = sorted(build() for _ in range(3))[1]
report("cache_build", secs, real, rows_per_s=round(a.rows / secs, 1), padded_tokens_per_s=round(padded / secs, 1),
       ideal_s=round(ideal, 4), efficiency=round(ideal / secs, 3), **common)

with tempfile.TemporaryDirectory(dir=a.cache_dir) as root:
    t = time.perf_counter()
    fingerprint = model_fingerprint(w, cfg)
    fp_s = time.perf_counter() - t
    store = FrozenStore(root, model_name=a.preset, model_source="random", fingerprint=fingerprint,
                        dtype=str(w.embed.dtype), k=k, with_base=with_base)
    secs = build(store)
    report("cache_write", secs, real, rows_per_s=round(a.rows / secs, 1), ideal_s=round(ideal, 4),
           efficiency=round(ideal / secs, 3), disk_mib=round(store.size_bytes() / 2**20, 1),
           fingerprint_s=round(fp_s, 3), **common)
    secs = build(store)
    report("cache_reuse", secs, real, rows_per_s=round(a.rows / secs, 1), **common)
