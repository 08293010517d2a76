"""Training-step times on Qwen2.5-14B shapes (random bf16 weights), the workloads of the PyTorch
peer (../shared/bench/anchor_torch.py cases steer, kl, lora1, lora32).

Usage: python bench/train_steps.py [--cases steer,kl,kl_cached,lora1,lora32] [--tiny]
Prints one JSON line per case (median seconds of a full optimiser step, weights resident).
"""

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.common import bench_config, random_weights, report, timeit  # noqa: E402
from emjax.train import step as TS  # noqa: E402
from emjax.interventions import Interventions, init_lora, init_steering, shared_prefix_layers  # noqa: E402
from emjax.model.schema import PROJECTIONS  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--cases", default="steer,kl,kl_cached,lora1,lora1_cached,lora32")
p.add_argument("--batch", type=int, default=8)
p.add_argument("--seq", type=int, default=256)
p.add_argument("--remat", default="", help="remat policy for the trained suffix ('', full, dots)")
p.add_argument("--loss-chunk", type=int, default=0)
p.add_argument("--attention", default="xla", choices=["xla", "cudnn"])
p.add_argument("--unroll-layers", action="store_true", help="StepOptions.unroll_layers: no layer loop")
p.add_argument("--tiny", action="store_true")
a = p.parse_args()

cfg = bench_config(a.tiny)
B, T, mid = a.batch, a.seq, cfg.middle_layer
w = random_weights(cfg)
key = jax.random.PRNGKey(1)
tokens = jax.random.randint(key, (1, B, T), 0, cfg.vocab_size)
mask = jnp.ones((1, B, T), bool)
sft = TS.SFTBatch(tokens=tokens, mask=mask, targets=jnp.roll(tokens, -1, axis=-1), loss_mask=mask)
kl_tokens = jax.random.randint(jax.random.PRNGKey(2), (1, B, T), 0, cfg.vocab_size)
kl = TS.KLBatch(tokens=kl_tokens, mask=mask)


def run_case(name, params, kl_batch, sft_batch=sft, tokens_per_step=B * T):
    tx, _ = TS.make_optimizer(1e-4, total_steps=1000, warmup_steps=0)
    opts = TS.StepOptions(first_layer=shared_prefix_layers(params, cfg), remat=a.remat or None,
                          loss_chunk=a.loss_chunk or None, attention=a.attention, unroll_layers=a.unroll_layers)
    step = TS.compile_step(cfg, opts, tx)
    if a.attention != "xla":  # same loss as the exact path (bf16 tolerance)?
        first = jax.tree.map(lambda x: x[0], (sft_batch, kl_batch))
        args = (params, w, cfg)
        loss = lambda o: float(TS.micro_loss(*args, o, first[0], first[1], jnp.float32(1.0), 1.0, 1.0)[0])
        fast, exact = loss(opts), loss(dataclasses.replace(opts, attention="xla"))
        print(json.dumps({"check": name, "attention": a.attention, "loss": fast, "loss_xla": exact,
                          "rel_diff": abs(fast - exact) / abs(exact)}), flush=True)
    box = [TS.init_state(jax.tree.map(jnp.copy, params), tx)]  # the step donates its state
    lam = jnp.float32(1.0)

    def once():
        box[0], m = step(box[0], w, sft_batch, kl_batch, lam)
        jax.block_until_ready(m["loss"])
    t = time.perf_counter()
    once()  # compiles
    first_s = time.perf_counter() - t
    s = timeit(once, warm=1, reps=7)
    report(name, s, tokens_per_step, B=B, T=T, remat=a.remat or None, loss_chunk=a.loss_chunk or None,
           attention=a.attention, first_call_s=round(first_s, 1), unrolled=a.unroll_layers)


cases = a.cases.split(",")
steer = Interventions(steer=init_steering(cfg, layers=(mid,), alpha=1.0))
if "steer" in cases:
    run_case("qwen14b_steer_layer_mid_step", steer, None)
if "kl" in cases:
    run_case("qwen14b_steer_kl_step", steer, kl, tokens_per_step=2 * B * T)
if "kl_cached" in cases:
    # The frozen-model cache: prefix below layer `mid` and the base model's final hidden states
    # on the KL rows are computed once per data set, not per step (see emjax/train/frozen_cache.py).
    px, _ = TS.frozen_outputs(w, cfg, sft.tokens[0], sft.mask[0], mid, False)
    kx, kb = TS.frozen_outputs(w, cfg, kl.tokens[0], kl.mask[0], mid, True)
    sft_c = sft.replace(prefix=px[None])
    kl_c = kl.replace(prefix=kx[None], base_hidden=kb[None])
    run_case("qwen14b_steer_kl_step_cached", steer, kl_c, sft_batch=sft_c, tokens_per_step=2 * B * T)
    run_case("qwen14b_steer_step_cached_prefix", steer, None, sft_batch=sft_c)
if "lora1" in cases:
    lora = init_lora(cfg, jax.random.PRNGKey(3), rank=1, alpha=1.0, modules=("down_proj",), layers=(mid,))
    run_case("qwen14b_lora_r1_layer_mid_down_step", Interventions(lora=lora), None)
if "lora1_cached" in cases:
    lora = init_lora(cfg, jax.random.PRNGKey(3), rank=1, alpha=1.0, modules=("down_proj",), layers=(mid,))
    px, _ = TS.frozen_outputs(w, cfg, sft.tokens[0], sft.mask[0], mid, False)
    run_case("qwen14b_lora_r1_layer_mid_down_step_cached_prefix", Interventions(lora=lora), None,
             sft_batch=sft.replace(prefix=px[None]))
if "lora32" in cases:
    lora = init_lora(cfg, jax.random.PRNGKey(4), rank=32, alpha=64.0, modules=PROJECTIONS)
    run_case("qwen14b_lora_r32_all_linear_step", Interventions(lora=lora), None)
