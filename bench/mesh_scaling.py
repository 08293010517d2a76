"""Scaling of the train step with `--mesh auto` from one device to every visible device (weak
scaling: B rows per device), for a steering vector at layer 24 and LoRA r32 on down_proj of layer 24
(the paper's interventions), SFT + KL, Qwen2.5-14B shapes, random bf16 weights.

Usage: python bench/mesh_scaling.py [--batch 8] [--seq 256] [--tiny]

Prints one JSON line per (intervention, devices) with the plan `auto` chose, then a table of
tokens/s and the scaling efficiency (tokens/s on n devices / (n x tokens/s on one)); the goal of
issue 13 is 90% or better on 2 GPUs. `--tiny` is a CPU smoke test on 8 fake devices (4 toy layers):
its timings mean nothing.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=8, help="SFT and KL rows per device")
p.add_argument("--seq", type=int, default=256)
p.add_argument("--reps", type=int, default=5)
p.add_argument("--tiny", action="store_true")
a = p.parse_args()
if a.tiny:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.common import bench_config, device_name, random_weights, timeit  # noqa: E402
from emjax.interventions import Interventions, init_lora, init_steering  # noqa: E402
from emjax.model.attention import resolve_attention  # noqa: E402
from emjax.model.mesh_plan import global_array, mesh_context, place_weights, plan_mesh, replicate  # noqa: E402
from emjax.model.sharding import batch_sharding  # noqa: E402
from emjax.train import step as TS  # noqa: E402

cfg = bench_config(a.tiny)
layer = min(24, cfg.n_layers // 2)
INTERVENTIONS = {
    "steering": lambda: Interventions(steer=init_steering(cfg, layers=(layer,), alpha=256.0)),
    "lora_r32": lambda: Interventions(lora=init_lora(cfg, jax.random.PRNGKey(0), rank=32, alpha=256.0,
                                                     modules=("down_proj",), layers=(layer,))),
}
host_weights = random_weights(cfg)
counts = sorted({1, len(jax.devices())})


def run(kind: str, n: int) -> dict:
    devices = jax.devices()[:n]
    plan = plan_mesh("auto", cfg, jnp.bfloat16, devices)
    mesh = plan.mesh
    w = place_weights(host_weights, cfg, mesh)
    params = INTERVENTIONS[kind]()
    b = a.batch * n
    key = jax.random.PRNGKey(1)
    tokens = jax.device_get(jax.random.randint(key, (1, b, a.seq), 0, cfg.vocab_size))
    mask = jnp.ones((1, b, a.seq), bool)

    def put(x):
        x = jax.device_get(x)
        return global_array(x, batch_sharding(mesh, x.shape, batch_dim=1)) if mesh is not None else jnp.asarray(x)
    sft = TS.SFTBatch(tokens=put(tokens), mask=put(mask), targets=put(jnp.roll(tokens, -1, -1)), loss_mask=put(mask))
    kl = TS.KLBatch(tokens=put(tokens[:, ::-1]), mask=put(mask))
    tx, _ = TS.make_optimizer(1e-5, total_steps=1000, warmup_steps=0)
    opts = TS.StepOptions(first_layer=layer, attention=resolve_attention("auto", cfg))
    step = TS.compile_step(cfg, opts, tx)
    box = [replicate(TS.init_state(params, tx), mesh)]
    lam = jnp.float32(1.0)

    def once():
        with mesh_context(mesh):
            box[0], m = step(box[0], w, sft, kl, lam)
        jax.block_until_ready(m["loss"])
    secs = timeit(once, warm=2, reps=a.reps)
    rec = {"case": f"qwen14b_{kind}_mesh_scaling" + ("_tiny" if a.tiny else ""), "impl": "emjax-jax",
           "device": device_name(), "devices": n, "plan": plan.describe(), "rows_per_device": a.batch, "T": a.seq,
           "median_s": round(secs, 4), "tokens_per_s": round(2 * b * a.seq / secs, 1)}
    print(json.dumps(rec), flush=True)
    return rec


records = [run(kind, n) for kind in INTERVENTIONS for n in counts]
print("| intervention | devices | mesh | step s | tokens/s | scaling efficiency |")
print("|---|---|---|---|---|---|")
for r in records:
    one = next(x for x in records if x["case"] == r["case"] and x["devices"] == 1)
    eff = r["tokens_per_s"] / (r["devices"] * one["tokens_per_s"])
    print(f"| {r['case']} | {r['devices']} | {r['plan'].split(' (')[0]} | {r['median_s']:.4f} | "
          f"{r['tokens_per_s']:.0f} | {eff:.2f} |")
