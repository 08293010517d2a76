"""N steering vectors trained in one vmapped step (emjax.train.vmapped) against N single steps of
the Trainer's step, on Qwen2.5-14B shapes (random bf16 weights): steering at the middle layer
(24 of 48), frozen cache on (the prefix below the vector and the KL rows' base hidden states come
precomputed), KL on. Both sides do one optimiser step for each of the N runs, with per-run lambda.

Usage: python bench/vmap_runs.py [--runs 8] [--batch 8] [--seq 256] [--distinct-batches] [--tiny]
Prints a table and one JSON line per case (median seconds of the N run-steps, weights resident).

Memory sets the defaults `--remat full --loss-chunk 128` (both sides; bench/train_steps.py runs
without): by our estimate one run-step's suffix activations are ~21 GB at B=8, T=256 (SFT and KL rows, 23
layers), so eight of them saved for the backward (~170 GB) would not fit beside the 28 GB of
weights, nor would eight runs' float32 logits ([8 x 8 x 256, 152k] is 10 GB per array).
`--remat none --loss-chunk 0` gives train_steps' settings (for fewer --runs).

FLOPs are model FLOPs, 2 per multiply-add of the matmuls, counted alike for both sides as N
times one run's step (the vmapped step does a little less: what does not depend on the vector,
e.g. the base logits of the KL rows, runs once for all runs). Per token, with the suffix layers
[k, L) run from the cached prefix and the vector added after block `layer`:
  layer FLOPs  fwd: 2 (q, k, v, o, gate, up, down weights) + 4 T H hd (QK^T and PV over all T keys,
               as the XLA path computes them under the causal mask)
               bwd: activation gradients only (the weights are frozen): 2 (weights) + 8 T H hd
  SFT row      fwd of layers [k, L) + unembedding (2 D V), bwd of layers (layer, L) + unembedding
  KL row       the same for the adapted side, plus the base logits from the cached hidden states
               (2 D V); the base model's layers are not run (cache)
Norms, softmaxes and elementwise work are not counted (XLA's cost analysis of the single step on
a scaled-down Qwen2 shape counts 0.5% more). The forwards that --remat and --loss-chunk recompute
are not counted either: the TFLOP/s are of model FLOPs.
Peak memory is the device's peak_bytes_in_use (jax memory_stats) after each side ran, the single
steps first: weights, cache rows and the larger step's temporaries (n/a on CPU).
"""

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.common import bench_config, random_weights, report, timeit  # noqa: E402
from emjax.interventions import Interventions, init_steering, shared_prefix_layers  # noqa: E402
from emjax.train import step as TS  # noqa: E402
from emjax.train.vmapped import compile_vmapped_step, stacked_state  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--runs", type=int, default=8, help="steering vectors trained together")
p.add_argument("--batch", type=int, default=8, help="rows per step, SFT and KL alike (bench/train_steps.py)")
p.add_argument("--seq", type=int, default=256)
p.add_argument("--layer", type=int, default=None, help="steered layer (default: the middle, 24 of 48)")
p.add_argument("--distinct-batches", action="store_true",
               help="each run its own rows (a seed sweep) instead of one shared batch (a lambda / lr sweep)")
p.add_argument("--remat", default="full", help="remat policy for the trained suffix (none, full, dots), both sides")
p.add_argument("--loss-chunk", type=int, default=128, help="sequence chunk of the losses (0: whole rows), both sides")
p.add_argument("--attention", default="xla", choices=["xla", "cudnn"])
p.add_argument("--tiny", action="store_true", help="a 4-layer toy of the shapes, for a CPU smoke run")
a = p.parse_args()

cfg = bench_config(a.tiny)
N, B, T = a.runs, a.batch, a.seq
layer = cfg.middle_layer if a.layer is None else a.layer
w = random_weights(cfg)
steer = Interventions(steer=init_steering(cfg, layers=(layer,), alpha=1.0))
k = shared_prefix_layers(steer, cfg)
n_sets = N if a.distinct_batches else 1


def cached_batches(seed: int) -> tuple[TS.SFTBatch, TS.KLBatch]:
    """One step's SFT and KL rows [A=1, B, T] with the frozen cache's prefix and base hidden states."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    mask = jnp.ones((1, B, T), bool)
    tok = jax.random.randint(k1, (1, B, T), 0, cfg.vocab_size)
    kl_tok = jax.random.randint(k2, (1, B, T), 0, cfg.vocab_size)
    px, _ = TS.frozen_outputs(w, cfg, tok[0], mask[0], k, False)
    kx, kb = TS.frozen_outputs(w, cfg, kl_tok[0], mask[0], k, True)
    sft = TS.SFTBatch(tokens=tok, mask=mask, targets=jnp.roll(tok, -1, axis=-1), loss_mask=mask, prefix=px[None])
    return sft, TS.KLBatch(tokens=kl_tok, mask=mask, prefix=kx[None], base_hidden=kb[None])


sets = [cached_batches(10 + i) for i in range(n_sets)]
run_batch = [sets[i % n_sets] for i in range(N)]  # run i's rows
lams = jnp.asarray([10.0 ** (i - N // 2) for i in range(N)], jnp.float32)  # per-run lambda (values: any)
lrs = jnp.full((N,), 1e-4, jnp.float32)
optimizer = functools.partial(TS.make_optimizer, total_steps=1000, warmup_steps=0)
opts = TS.StepOptions(first_layer=k, remat=None if a.remat in ('', 'none') else a.remat, loss_chunk=a.loss_chunk or None, attention=a.attention)


def flops_per_run_step() -> float:
    d, hd, h, kv, f, v, L = cfg.d_model, cfg.head_dim, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim, cfg.vocab_size, cfg.n_layers
    weights = d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * f  # multiply-adds per token per layer
    fwd_layer = 2 * weights + 4 * T * h * hd
    bwd_layer = 2 * weights + 8 * T * h * hd
    unembed = 2 * d * v
    adapted = (L - k) * fwd_layer + (L - layer - 1) * bwd_layer + 2 * unembed  # suffix fwd + bwd, logits fwd + bwd
    return B * T * adapted + B * T * (adapted + unembed)  # SFT rows; KL rows (+ base logits)


def peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats()  # None on CPU
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


# N single steps: the Trainer's compiled step, one state per run (first: its peak is the lower one)
tx, _ = optimizer(1e-4)
single = TS.compile_step(cfg, opts, tx)
states = [TS.init_state(jax.tree.map(jnp.copy, steer), tx) for _ in range(N)]


def sequential():
    ms = []
    for i in range(N):
        states[i], m = single(states[i], w, run_batch[i][0], run_batch[i][1], lams[i])
        ms.append(m["loss"])
    jax.block_until_ready(ms)


s_seq = timeit(sequential, warm=2, reps=5)
peak_seq = peak_bytes()

# the same N run-steps in one vmapped step
vstep = compile_vmapped_step(cfg, opts, optimizer, shared_batch=not a.distinct_batches)
if a.distinct_batches:
    sft_b, kl_b = jax.tree.map(lambda *xs: jnp.stack(xs), *[b[0] for b in run_batch]), \
        jax.tree.map(lambda *xs: jnp.stack(xs), *[b[1] for b in run_batch])
else:
    sft_b, kl_b = sets[0]
box = [stacked_state(TS.init_state(steer, tx), N)]


def vmapped():
    box[0], m = vstep(box[0], w, sft_b, kl_b, lams, lrs)
    jax.block_until_ready(m["loss"])


s_vm = timeit(vmapped, warm=2, reps=5)
peak_vm = peak_bytes()

flops = N * flops_per_run_step()
tokens = N * 2 * B * T  # SFT and KL rows of every run
gib = lambda b: "n/a" if b is None else f"{b / 2**30:.1f}"  # noqa: E731
print(f"{N} steering vectors at layer {layer} (shared prefix {k} layers), B={B}, T={T}, frozen cache, KL on, "
      f"{'distinct' if a.distinct_batches else 'shared'} batches; {flops / 1e12:.2f} TFLOP per {N} run-steps")
print(f"{'case':<22}{'s per call':>12}{'s per run-step':>16}{'TFLOP/s':>10}{'peak GiB':>10}")
for name, s, peak in ((f"{N} single steps", s_seq, peak_seq), (f"1 vmapped step (N={N})", s_vm, peak_vm)):
    print(f"{name:<22}{s:>12.4f}{s / N:>16.4f}{flops / s / 1e12:>10.2f}{gib(peak):>10}")
print(f"speedup {s_seq / s_vm:.2f}x", flush=True)
common = dict(runs=N, B=B, T=T, layer=layer, distinct_batches=a.distinct_batches, remat=None if a.remat in ('', 'none') else a.remat,
              loss_chunk=a.loss_chunk or None, attention=a.attention, tiny=a.tiny)
report(f"qwen14b_steer_kl_cached_sequential{N}", s_seq, tokens, flops, peak_bytes_in_use=peak_seq, **common)
report(f"qwen14b_steer_kl_cached_vmapped{N}", s_vm, tokens, flops, peak_bytes_in_use=peak_vm,
       speedup=round(s_seq / s_vm, 2), **common)
