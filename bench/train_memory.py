"""Peak device memory and step time of LoRA r32 on every projection of every layer, SFT + KL, per remat
policy, against the estimate of emjax.train.memory. Qwen2.5-14B shapes, random bf16 weights.

Usage: python bench/train_memory.py [--policies none,dots,full] [--batch 8] [--seq 256] [--unroll-layers] [--tiny]

Each policy runs in a fresh subprocess, so that the allocator's peak (`memory_stats()`
`peak_bytes_in_use`, read after the timed steps) belongs to that policy alone; the compiled
program's own memory analysis (arguments + outputs - donated + temporaries) is reported beside it.
A policy that runs out of memory is recorded as "OOM" and the next one runs. Prints one JSON line
per policy, then a table. `--tiny` runs a 4-layer toy of the same shapes on the CPU (a smoke test:
the CPU reports no allocator peak, so only the compiled analysis is compared there).

The workload is the EM baseline of configs/paper_14b.py (`em_baseline`): rank 32, alpha 64, rsLoRA,
all seven projections of all 48 layers; B rows of SFT and B rows of KL per micro-batch (upstream's
kl_batch_size 8), no frozen cache (the intervention starts at layer 0, so only the KL base outputs
could be cached), attention as `emjax train` picks it (`--attention auto`: cuDNN on NVIDIA GPUs).
"""

import argparse
import datetime
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GiB = 2 ** 30
# An H100 80GB HBM3 reports 81,559 MiB of memory in nvidia-smi (an A100 80GB 81,920 MiB; both as listed in
# modal-labs/modal-client PR #2797, and 81559MiB in NVIDIA/nccl issue 1264's nvidia-smi output); a process
# gets at most about 95% of it (XLA_PYTHON_CLIENT_MEM_FRACTION=0.95; the CUDA context and the
# cuBLAS / cuDNN workspaces take the rest). "Fits 80 GB" compares the peak with that.
CARD_80GB_BYTES = 81559 * 2 ** 20
USABLE = 0.95

p = argparse.ArgumentParser()
p.add_argument("--policies", default="none,dots,full", help="remat policies: none, dots, full")
p.add_argument("--batch", type=int, default=8)
p.add_argument("--seq", type=int, default=256)
p.add_argument("--loss-chunk", type=int, default=0)
p.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn"])
p.add_argument("--reps", type=int, default=5)
p.add_argument("--unroll-layers", action="store_true", help="StepOptions.unroll_layers (train.layer_loop=unrolled)")
p.add_argument("--tiny", action="store_true")
p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one policy, in this process
a = p.parse_args()


def is_oom(text: str) -> bool:
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def worker(policy: str) -> dict:
    """Compiles and times the step under one remat policy; returns its JSON record."""
    import jax
    import jax.numpy as jnp

    from bench.common import bench_config, device_name, random_weights, timeit
    from emjax.interventions import Interventions, init_lora
    from emjax.model.attention import resolve_attention
    from emjax.model.schema import PROJECTIONS
    from emjax.train import memory as MEM
    from emjax.train import step as TS

    remat = None if policy == "none" else policy
    cfg = bench_config(a.tiny)
    B, T = a.batch, a.seq
    attention = resolve_attention(a.attention, cfg)
    lora = init_lora(cfg, jax.random.PRNGKey(4), rank=32, alpha=64.0, modules=PROJECTIONS)
    params = Interventions(lora=lora)
    plan = MEM.MemoryPlan(batch_size=B, seq_len=T, kl_batch_size=B, kl=True, grad_accum=1, remat=remat,
                          loss_chunk=a.loss_chunk or None, attention=attention, dtype="bfloat16")
    est = MEM.estimate_training_memory(cfg, params, plan)
    rec = {"case": "qwen14b_lora_r32_all_kl_memory" + ("_tiny" if a.tiny else ""), "impl": "emjax-jax",
           "device": device_name(), "remat": policy, "B": B, "T": T, "kl_rows": B, "attention": attention,
           "loss_chunk": a.loss_chunk or None, "unrolled": a.unroll_layers, "estimate_gib": round(est.total / GiB, 3),
           "estimate_terms_gib": {k: round(v / GiB, 3) for k, v in est.terms.items()},
           "date": datetime.date.today().isoformat()}
    dev = jax.devices()[0]
    rec["bytes_limit_gib"] = round(MEM.device_bytes_limit(dev) / GiB, 3) if MEM.device_bytes_limit(dev) else None
    try:
        w = random_weights(cfg)
        tokens = jax.random.randint(jax.random.PRNGKey(1), (1, B, T), 0, cfg.vocab_size)
        mask = jnp.ones((1, B, T), bool)
        sft = TS.SFTBatch(tokens=tokens, mask=mask, targets=jnp.roll(tokens, -1, axis=-1), loss_mask=mask)
        kl = TS.KLBatch(tokens=jax.random.randint(jax.random.PRNGKey(2), (1, B, T), 0, cfg.vocab_size), mask=mask)
        tx, _ = TS.make_optimizer(1e-5, total_steps=1000, warmup_steps=0)
        opts = TS.StepOptions(first_layer=0, remat=remat, loss_chunk=a.loss_chunk or None, attention=attention,
                             unroll_layers=a.unroll_layers)
        box = [TS.init_state(params, tx)]
        lam = jnp.float32(1.0)
        compiled = TS.compile_step(cfg, opts, tx).lower(box[0], w, sft, kl, lam).compile()
        m = compiled.memory_analysis()
        if m is not None:
            peak = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
            rec.update(compiled_peak_gib=round(peak / GiB, 3), compiled_temp_gib=round(m.temp_size_in_bytes / GiB, 3),
                       compiled_args_gib=round(m.argument_size_in_bytes / GiB, 3),
                       compiled_ratio=round(peak / est.total, 3))

        def once():
            box[0], metrics = compiled(box[0], w, sft, kl, lam)
            jax.block_until_ready(metrics["loss"])
        rec["median_s"] = round(timeit(once, warm=2, reps=a.reps), 4)
        rec["tokens_per_s"] = round(2 * B * T / rec["median_s"], 1)
        stats = dev.memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            peak = stats["peak_bytes_in_use"]
            rec.update(measured_peak_gib=round(peak / GiB, 3), ratio=round(peak / est.total, 3),
                       fits_80gb=peak <= USABLE * CARD_80GB_BYTES)
        else:
            rec.update(measured_peak_gib=None, ratio=None, fits_80gb=None)
    except Exception as e:  # noqa: BLE001 - an out-of-memory policy is a result, not a failure
        if not is_oom(str(e)):
            raise
        rec.update(measured_peak_gib="OOM", ratio=None, fits_80gb=False, error=str(e).splitlines()[0][:300])
    rec["estimate_fits_80gb"] = est.total <= USABLE * CARD_80GB_BYTES
    return rec


def run_policy(policy: str) -> dict:
    """`policy` in a fresh process; its record, or an OOM / error record if the process died."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", policy, "--batch", str(a.batch), "--seq", str(a.seq),
           "--loss-chunk", str(a.loss_chunk), "--attention", a.attention, "--reps", str(a.reps)]
    cmd += ["--tiny"] if a.tiny else []
    cmd += ["--unroll-layers"] if a.unroll_layers else []
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(USABLE))  # let the large policies try
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"case": "qwen14b_lora_r32_all_kl_memory" + ("_tiny" if a.tiny else ""), "remat": policy,
            "B": a.batch, "T": a.seq, "measured_peak_gib": "OOM" if is_oom(proc.stderr + proc.stdout) else "error",
            "fits_80gb": False if is_oom(proc.stderr + proc.stdout) else None, "error": " | ".join(tail)[-400:],
            "date": datetime.date.today().isoformat()}


def table(records: list[dict]) -> str:
    def f(x, fmt="{:.3f}"):
        return "-" if x is None else x if isinstance(x, str) else fmt.format(x)
    rows = ["| remat | measured peak GiB | compiled GiB | estimate GiB | measured / estimate | step s | fits 80 GB |",
            "|---|---|---|---|---|---|---|"]
    for r in records:
        fits = r.get("fits_80gb")
        rows.append(f"| {r['remat']} | {f(r.get('measured_peak_gib'))} | {f(r.get('compiled_peak_gib'))} | "
                    f"{f(r.get('estimate_gib'))} | {f(r.get('ratio'), '{:.3f}')} | {f(r.get('median_s'), '{:.4f}')} | "
                    f"{'-' if fits is None else 'yes' if fits else 'no'} |")
    return "\n".join(rows)


if a.worker:
    print(json.dumps(worker(a.worker)), flush=True)
else:
    records = []
    for pol in a.policies.split(","):
        r = run_policy(pol.strip())
        print(json.dumps(r), flush=True)
        records.append(r)
    print(table(records))
