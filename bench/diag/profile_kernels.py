"""Diagnostic: trace one workload on 14B shapes and print where the GPU time goes (kernel time by
name and by kind, busy time vs wall time, idle time before each kernel), parsed from the profiler's
XSpace in-process. What a fusion computes: `compiled_hlo.py` prints it by the same name.

Cases:
  gen     sampling, 32 rows x 32-token prompts (`--new` tokens)
  eval    the evaluation sampling shape: `--batch` rows over 8 prompts of `--prompt` tokens, `--new`
          new tokens (400 rows; prompt 300 + 80 new has the mean cache fill of 40 + 600 new)
  sweep   the 16-norm loss sweep
  lora32  one LoRA r32 (all linear, all layers) training step, B=8, T=256
  judge   the local judge on `--prompts` prompts of 350-450 tokens (prefill + answer tree)

Usage: python bench/diag/profile_kernels.py --case gen|eval|sweep|lora32|judge [--new 32] [--top 30]
Writes the raw trace under $OUT (or ./profile) for TensorBoard.
"""

import argparse
import collections
import glob
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import bench_config, random_weights  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--case", choices=["gen", "eval", "sweep", "lora32", "judge"], required=True)
p.add_argument("--new", type=int, default=32)
p.add_argument("--batch", type=int, default=400, help="eval: rows")
p.add_argument("--prompt", type=int, default=300, help="eval: prompt tokens")
p.add_argument("--prompts", type=int, default=160, help="judge: prompts")
p.add_argument("--top", type=int, default=30)
p.add_argument("--unroll", type=int, default=1)
p.add_argument("--unroll-layers", action="store_true", help="lora32: StepOptions.unroll_layers")
p.add_argument("--tiny", action="store_true")
a = p.parse_args()

cfg = bench_config(a.tiny)
w = random_weights(cfg)
attention = "xla" if a.tiny else "cudnn"

if a.case == "gen":
    from emjax.model import sampling as S
    prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (32, 32)).tolist()

    def run():
        S.generate(w, cfg, prompts, max_new_tokens=a.new, temperature=1.0, seed=1, layer_unroll=a.unroll)
elif a.case == "eval":
    from emjax.model import sampling as S
    prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (8, a.prompt)).tolist()

    def run():
        S.sample(w, cfg, prompts, repeats=[a.batch // 8] * 8, max_new_tokens=a.new, temperature=1.0, seed=1)
elif a.case == "lora32":
    from emjax.interventions import Interventions, init_lora, shared_prefix_layers
    from emjax.model.schema import PROJECTIONS
    from emjax.train import step as TS
    B, T = (2, 16) if a.tiny else (8, 256)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (1, B, T), 0, cfg.vocab_size)
    mask = jnp.ones((1, B, T), bool)
    sft = TS.SFTBatch(tokens=tokens, mask=mask, targets=jnp.roll(tokens, -1, axis=-1), loss_mask=mask)
    params = Interventions(lora=init_lora(cfg, jax.random.PRNGKey(4), rank=32, alpha=64.0, modules=PROJECTIONS))
    tx, _ = TS.make_optimizer(1e-4, total_steps=1000, warmup_steps=0)
    step = TS.compile_step(cfg, TS.StepOptions(first_layer=shared_prefix_layers(params, cfg), attention=attention,
                                               unroll_layers=a.unroll_layers), tx)
    box = [TS.init_state(params, tx)]

    def run():
        box[0], m = step(box[0], w, sft, None, jnp.float32(1.0))
        jax.block_until_ready(m["loss"])
elif a.case == "judge":
    from bench.common import judge_tree
    from emjax.inference.local_judge import TreeArrays, plan_batches, score_batches
    tree = judge_tree()
    rng = np.random.default_rng(0)
    judged = [rng.integers(100, cfg.vocab_size - 300, n).tolist() for n in rng.integers(350, 451, a.prompts)]
    plan = plan_batches([len(x) for x in judged], batch_size=16, pad_to=32, max_batch_tokens=1 << 20,
                        n_nodes=tree.n_nodes)
    arrays = TreeArrays.of(tree)

    def run():
        for _ in score_batches(w, cfg, (([judged[i] for i in b.indices], b.rows, b.length) for b in plan), arrays,
                               (cfg.vocab_size - 2, cfg.vocab_size - 1), cfg.vocab_size):
            pass
else:
    from emjax.interventions import Interventions, init_steering
    from emjax.interventions import arithmetic as A
    from emjax.metrics import sweeps as SW
    tokens = jax.random.randint(jax.random.PRNGKey(1), (8, 256), 0, cfg.vocab_size)
    mask = jnp.ones((8, 256), bool)
    sv = init_steering(cfg, layers=(cfg.middle_layer,), alpha=1.0)
    sv = sv.replace(vectors=jax.random.normal(jax.random.PRNGKey(2), sv.vectors.shape))
    stacked = A.rescale_to_norms(Interventions(steer=sv), np.arange(1, 17, dtype=np.float32))

    def run():
        np.asarray(SW.sweep_losses(stacked, w, cfg, tokens, mask, targets=jnp.roll(tokens, -1, -1),
                                   loss_mask=mask, loss_chunk=64, attention=attention))

run()
run()
out = os.path.join(os.environ.get("PROFILE_DIR", os.environ.get("OUT", ".")), f"profile_{a.case}")
with jax.profiler.trace(out):
    t0 = time.perf_counter()
    run()
    wall = time.perf_counter() - t0

path = sorted(glob.glob(os.path.join(out, "**", "*.xplane.pb"), recursive=True))[-1]
data = jax.profiler.ProfileData.from_file(path)
by_name = collections.defaultdict(lambda: [0, 0.0])
by_kind = collections.defaultdict(lambda: [0, 0.0])


def kind_of(name: str) -> str:
    """A kernel's broad kind from its name (cuBLAS/cuDNN/Triton/Pallas/XLA fusion conventions)."""
    n = name.lower()
    if re.search(r"gemm|xmma|nvjet|cutlass|matmul|sm90_|dot", n):
        return "matmul"
    if re.search(r"fmha|flash|attention|attend|decode", n):
        return "attention"
    if re.search(r"memcpy|memset|copy", n):
        return "copy"
    if "reduce" in n:
        return "reduction fusion"
    return "other fusion"


intervals, events = [], []
for plane in data.planes:
    if not plane.name.startswith("/device:GPU"):
        continue
    for line in plane.lines:
        if "Stream" not in line.name:
            continue
        for ev in line.events:
            by_kind[kind_of(ev.name)][0] += 1
            by_kind[kind_of(ev.name)][1] += ev.duration_ns / 1e6
            by_name[ev.name][0] += 1
            by_name[ev.name][1] += ev.duration_ns / 1e6
            intervals.append((ev.start_ns, ev.start_ns + ev.duration_ns))
            events.append((ev.start_ns, ev.start_ns + ev.duration_ns, ev.name))
events = sorted(events)
gaps = collections.defaultdict(lambda: [0, 0.0])  # idle time before each kernel, by its name
for (s0, e0, _), (s1, _, name) in zip(events, events[1:]):
    if s1 > e0:
        gaps[name][0] += 1
        gaps[name][1] += (s1 - e0) / 1e6
intervals.sort()
busy, end = 0.0, -1.0
for s, e in intervals:
    if e > end:
        busy += e - max(s, end)
        end = e
span = (intervals[-1][1] - intervals[0][0]) / 1e6 if intervals else 0.0
print(f"wall {wall * 1e3:.1f} ms; GPU span {span:.1f} ms; GPU busy {busy / 1e6:.1f} ms; "
      f"kernels {len(intervals)}")
if a.case in ("gen", "eval"):
    print(f"per new token: wall {wall * 1e3 / a.new:.2f} ms, busy {busy / 1e6 / a.new:.2f} ms, "
          f"kernels {len(intervals) / a.new:.0f}")
total = sum(v[1] for v in by_name.values())
print(f"{'ms':>9} {'%':>5} {'count':>6}  kernel")
for name, (n, ms) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[: a.top]:
    print(f"{ms:9.2f} {100 * ms / total:5.1f} {n:6d}  {name[:110]}")
print("by kind:")
for name, (n, ms) in sorted(by_kind.items(), key=lambda kv: -kv[1][1]):
    print(f"{ms:9.2f} {100 * ms / total:5.1f} {n:6d}  {name}")
print(f"idle GPU time before each kernel (top {a.top // 2}):")
for name, (n, ms) in sorted(gaps.items(), key=lambda kv: -kv[1][1])[: a.top // 2]:
    print(f"{ms:9.2f} ms {n:6d}  {name[:110]}")
