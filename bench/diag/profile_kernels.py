"""Diagnostic: trace one sampling run or one norm sweep on 14B shapes and print where the GPU time
goes (kernel time by name, busy time vs wall time), parsed from the profiler's XSpace in-process.

Usage: python bench/diag/profile_kernels.py --case gen|sweep [--new 32] [--top 30]
Writes the raw trace under $OUT (or ./profile) for TensorBoard.
"""

import argparse
import collections
import glob
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import bench_config, random_weights  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--case", choices=["gen", "sweep"], required=True)
p.add_argument("--new", type=int, default=32)
p.add_argument("--top", type=int, default=30)
p.add_argument("--unroll", type=int, default=1)
p.add_argument("--tiny", action="store_true")
a = p.parse_args()

cfg = bench_config(a.tiny)
w = random_weights(cfg)

if a.case == "gen":
    from emjax.model import sampling as S
    prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (32, 32)).tolist()

    def run():
        S.generate(w, cfg, prompts, max_new_tokens=a.new, temperature=1.0, seed=1, layer_unroll=a.unroll)
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
                                   loss_mask=mask, loss_chunk=64, attention="cudnn" if not a.tiny else "xla"))

run()
run()
out = os.path.join(os.environ.get("OUT", "."), f"profile_{a.case}")
with jax.profiler.trace(out):
    t0 = time.perf_counter()
    run()
    wall = time.perf_counter() - t0

path = sorted(glob.glob(os.path.join(out, "**", "*.xplane.pb"), recursive=True))[-1]
data = jax.profiler.ProfileData.from_file(path)
by_name = collections.defaultdict(lambda: [0, 0.0])
intervals, events = [], []
for plane in data.planes:
    if not plane.name.startswith("/device:GPU"):
        continue
    for line in plane.lines:
        if "Stream" not in line.name:
            continue
        for ev in line.events:
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
if a.case == "gen":
    print(f"per new token: wall {wall * 1e3 / a.new:.2f} ms, busy {busy / 1e6 / a.new:.2f} ms, "
          f"kernels {len(intervals) / a.new:.0f}")
total = sum(v[1] for v in by_name.values())
print(f"{'ms':>9} {'%':>5} {'count':>6}  kernel")
for name, (n, ms) in sorted(by_name.items(), key=lambda kv: -kv[1][1])[: a.top]:
    print(f"{ms:9.2f} {100 * ms / total:5.1f} {n:6d}  {name[:110]}")
print(f"idle GPU time before each kernel (top {a.top // 2}):")
for name, (n, ms) in sorted(gaps.items(), key=lambda kv: -kv[1][1])[: a.top // 2]:
    print(f"{ms:9.2f} ms {n:6d}  {name[:110]}")
