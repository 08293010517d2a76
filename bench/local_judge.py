"""Local-judge throughput on Qwen2.5-14B shapes: N judge prompts of ~400 tokens (uniform in
[min, max]), each scored for all 101 numbers + CODE + REFUSAL by one prefill of prompt + prefix tree
(emjax.inference.local_judge). Default: 800 answers x 2 metrics = 1600 prompts, the paper's eval size.

Reports the first pass (compiles one program per length bucket) as first_pass_s and a second, warm
pass as median_s (one pass, all prompts); tflops counts 2 x parameters x padded tokens (approximate).

With --shared N the prompts come in --groups groups whose first N tokens are the same (the chat
header, the template's head and the question before each answer: ~80-120 tokens of real judge
prompts); the run then goes through `score_window` with whole prompts (the baseline) and with the
shared prefix, in the same process, and prints the largest probability difference between the two.

Usage: python bench/local_judge.py [--prompts 1600 --min 300 --max 500 --batch 16 --pad-to 128 --tiny]
       python bench/local_judge.py --prompts 800 --min 350 --max 450 --shared 96 --groups 16
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bench.common import bench_config, judge_tree, random_weights, report  # noqa: E402
from emjax.model.schema import num_params  # noqa: E402
from emjax.inference.local_judge import TreeArrays, plan_batches, score_prompts  # noqa: E402
from emjax.inference.local_judge.stage import LocalJudgeConfig, score_window  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--prompts", type=int, default=1600)
p.add_argument("--min", type=int, default=300)
p.add_argument("--max", type=int, default=500)
p.add_argument("--batch", type=int, default=16)
p.add_argument("--pad-to", type=int, default=128)
p.add_argument("--max-batch-tokens", type=int, default=1 << 20)
p.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn", "joint"],
               help="prompt attention: cudnn (auto on GPU) / xla, the tree's by XLA; joint: one XLA attention "
                    "over prompt + tree (before issue 24)")
p.add_argument("--sync", action="store_true", help="one synchronised call per batch (before issue 24)")
p.add_argument("--shared", type=int, default=0, help="leading tokens shared by the prompts of a group")
p.add_argument("--groups", type=int, default=16, help="groups of prompts with a shared head (with --shared)")
p.add_argument("--tiny", action="store_true")
a = p.parse_args()

cfg = bench_config(a.tiny)
w = random_weights(cfg)
tree = judge_tree()
stops, limit = (cfg.vocab_size - 2, cfg.vocab_size - 1), cfg.vocab_size
rng = np.random.default_rng(0)
prompts = [rng.integers(100, cfg.vocab_size - 300, n).tolist() for n in rng.integers(a.min, a.max + 1, a.prompts)]
if a.shared:  # prompt i starts with its group's head (total lengths unchanged)
    heads = [rng.integers(100, cfg.vocab_size - 300, a.shared).tolist() for _ in range(a.groups)]
    prompts = [heads[i % a.groups] + x[a.shared:] for i, x in enumerate(prompts)]
batches = plan_batches([len(x) for x in prompts], batch_size=a.batch, pad_to=a.pad_to,
                       max_batch_tokens=a.max_batch_tokens, n_nodes=tree.n_nodes)
arrays = TreeArrays.of(tree)


def run_all(share: bool) -> tuple[float, np.ndarray | None, dict]:
    """(seconds, [prompts, S] log-probabilities or None, stats) of one pass over every prompt."""
    t = time.perf_counter()
    stats: dict = {}
    if a.sync:  # score_prompts returns host arrays: each call is synchronised (before issue 24)
        for b in batches:
            score_prompts(w, cfg, [prompts[i] for i in b.indices], arrays, stops, limit, rows=b.rows,
                          length=b.length, attention=a.attention)
        return time.perf_counter() - t, None, stats
    # one batch in flight while the host packs the next (what the stage does, window = every prompt)
    config = LocalJudgeConfig(batch_size=a.batch, pad_to=a.pad_to, max_batch_tokens=a.max_batch_tokens,
                              attention=a.attention, share_prefix=share, window=len(prompts))
    out = np.zeros((len(prompts), len(tree.texts)))
    for batch, lp in score_window(w, cfg, prompts, arrays, stops, limit, config, stats):
        out[list(batch.indices)] = lp
    return time.perf_counter() - t, out, stats


modes = [False, True] if a.shared and not a.sync else [False]
results = {}
for share in modes:
    first, scores, _ = run_all(share)
    warm, _, stats = run_all(share)
    results[share] = scores
    tokens = stats.get("device_tokens") or sum(b.rows * (b.length + tree.n_nodes) for b in batches)
    flops = 2 * num_params(cfg) * tokens  # matmuls only; the unembedding runs on the 1 + N tree rows alone
    extra = {}
    if share:
        extra = dict(shared_prefix=stats["shared_prefix"],
                     max_prob_diff_vs_whole=float(np.abs(np.exp(scores) - np.exp(results[False])).max()))
    report("qwen14b_local_judge" + ("_shared_prefix" if share else ""), warm, tokens, flops, GB=a.batch,
           prompts=a.prompts, prompt_len=[a.min, a.max], shared=a.shared, groups=a.groups if a.shared else None,
           pad_to=a.pad_to, attention=a.attention, sync=a.sync,
           shapes=sorted(map(tuple, stats.get("compiled_shapes", {(b.rows, b.length) for b in batches}))),
           first_pass_s=round(first, 2), device_tokens=tokens, prompts_per_s=round(a.prompts / warm, 1), **extra)
