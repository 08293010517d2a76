"""Sampling throughput on Qwen2.5-14B shapes (random bf16 weights, temperature 1, top-p 1, no stop
ids: every row makes all its new tokens).

Cases (`--case`):
  default  batch 32, 32-token prompts, 128 new tokens; the PyTorch peer's case `gen`.
  eval     evaluation scale: 50 samples of 8 questions (400 rows), 40-token prompts, 600 new
           tokens; each question's prompt is prefilled once for its 50 rows (prefix sharing;
           `--no-share` prefills every row). Prints tokens/s and the floor of this shape on the
           measured ceilings of an H200 (FLOOR_TFLOPS, FLOOR_TBPS).
  multi    10 interventions x 40 rows (8 prompts x 5 samples each) in one call, against the same
           rows in 10 calls of one intervention each; prints both times and their ratio.
           Interventions (`--multi-kind`): "mixed" = none, 5 steering vectors (middle layer,
           mlp_out) and 4 LoRA r1 on the middle layer's down_proj; "steer"; "lora".

Usage: python bench/generate.py [--case default|eval|multi] [--batch --prompt --new --reps --tiny]
"""

import argparse
import itertools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench.common import bench_config, random_weights, report, timeit  # noqa: E402
from emjax.interventions import Interventions, init_lora, init_steering  # noqa: E402
from emjax.model import decode_attention as DA  # noqa: E402
from emjax.model import row_hooks as R  # noqa: E402
from emjax.model import sampling as S  # noqa: E402
from emjax.model.row_shrink import SHRINK_MIN_ROWS  # noqa: E402

# Measured ceilings of one H200 (docs/design.md section 3): bf16 matmul and device copy.
FLOOR_TFLOPS = 798.0
FLOOR_TBPS = 3.0

CASES = {  # case -> (rows, prompt tokens, new tokens, timed repetitions)
    "default": (32, 32, 128, 3),
    "eval": (400, 40, 600, 2),
    "multi": (40, 40, 128, 2),
}

p = argparse.ArgumentParser()
p.add_argument("--case", default="default", choices=sorted(CASES))
p.add_argument("--batch", type=int, help="rows (multi: rows per intervention)")
p.add_argument("--prompt", type=int)
p.add_argument("--new", type=int)
p.add_argument("--reps", type=int)
p.add_argument("--questions", type=int, default=8, help="eval: distinct prompts (rows / questions samples each)")
p.add_argument("--no-share", action="store_true", help="eval: prefill every row (no prefix sharing)")
p.add_argument("--n-interventions", type=int, default=10, help="multi: interventions in the call")
p.add_argument("--multi-kind", default="mixed", choices=["mixed", "steer", "lora"])
p.add_argument("--unroll", type=int, default=1, help="layer-scan unroll factor in decode")
p.add_argument("--decode-attention", default="auto", choices=["auto", "xla", "pallas", "pallas_full"],
               help="pallas_full: the decode kernel reading every cache block (before issue 24)")
p.add_argument("--stop-rate", type=float, default=0.0,
               help="eval: this share of the vocabulary as stop ids (answers of spread-out lengths); also "
                    "times the same answers with the batch kept whole (no shrinking)")
p.add_argument("--tiny", action="store_true")
a = p.parse_args()
rows, plen, new, reps = CASES[a.case]
rows, plen, new, reps = a.batch or rows, a.prompt or plen, a.new or new, a.reps or (1 if a.tiny else reps)

cfg = bench_config(a.tiny)
w = random_weights(cfg)
rng = np.random.default_rng(0)
seed = [0]
common = dict(temperature=1.0, top_p=1.0, layer_unroll=a.unroll, decode_attention=a.decode_attention)


def floor(b: int, p: int, n: int) -> dict:
    """Seconds for n decode steps of b rows on the ceilings: per step the weight matmuls at
    max(FLOPs / FLOOR_TFLOPS, weight bytes / FLOOR_TBPS), then the attention reading the KV cache at
    FLOOR_TBPS (filled slots only; `all_slots`: every allocated slot, as the Pallas kernel reads)."""
    d, h, k, dh, f, v, L = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.ffn_dim, cfg.vocab_size, cfg.n_layers
    mm_params = L * (d * (h + 2 * k) * dh + h * dh * d + 3 * d * f) + d * v  # every matmul of a token
    item = w.embed.dtype.itemsize
    matmul_s = max(2 * b * mm_params / (FLOOR_TFLOPS * 1e12), mm_params * item / (FLOOR_TBPS * 1e12))
    per_slot = L * b * k * dh * 2 * item
    filled = sum(p + t + 1 for t in range(n)) * per_slot  # slots holding a token, summed over steps
    every = n * DA.cache_length(p + n) * per_slot
    floor_s, floor_all = n * matmul_s + filled / (FLOOR_TBPS * 1e12), n * matmul_s + every / (FLOOR_TBPS * 1e12)
    return {"floor_s": round(floor_s, 3), "floor_s_all_slots": round(floor_all, 3),
            "floor_tokens_per_s": round(b * n / floor_s, 1),
            "floor_tokens_per_s_all_slots": round(b * n / floor_all, 1),
            "matmul_tflop_per_step": round(2 * b * mm_params / 1e12, 2),
            "weight_gb_per_step": round(mm_params * item / 1e9, 2),
            "kv_gb_per_step_mean": round(filled / n / 1e9, 2), "kv_gb_per_step_all_slots": round(every / n / 1e9, 2)}


def prompts_of(n: int) -> list[list[int]]:
    return rng.integers(0, cfg.vocab_size, (n, plen)).tolist()


if a.case == "default":
    prompts = prompts_of(rows)

    def run():
        seed[0] += 1  # fresh samples each time; no stop ids, so every row makes `new` tokens
        out = S.generate(w, cfg, prompts, max_new_tokens=new, seed=seed[0], **common)
        assert all(len(o) == new for o in out)

    s = timeit(run, warm=1, reps=reps)
    report(f"qwen14b_generate_b{rows}_new{new}", s, rows * new, GB=rows, P=plen, NEW=new, unroll=a.unroll,
           decode_attention=a.decode_attention, xla_flags=os.environ.get("XLA_FLAGS", ""))

elif a.case == "eval":
    q = a.questions
    if rows % q:
        sys.exit(f"--batch {rows} must be a multiple of --questions {q}")
    prompts = prompts_of(q)
    if a.no_share:
        prompts, repeats = [pr for pr in prompts for _ in range(rows // q)], None
    else:
        repeats = [rows // q] * q
    got = {}
    # --stop-rate: random stop ids (a share of the vocabulary), so that answers end at spread-out
    # lengths as real ones do; the same seeds for both layouts, so both make the same answers
    stops = (rng.choice(cfg.vocab_size, max(1, round(a.stop_rate * cfg.vocab_size)), replace=False).tolist()
             if a.stop_rate else [])

    def runner(shrink_min_rows: int):
        """A timed call; each runner draws seeds 1, 2, ...: both layouts sample the same answers."""
        seeds = itertools.count(1)

        def run():
            r = S.sample(w, cfg, prompts, repeats=repeats, share_prompts=not a.no_share, max_new_tokens=new,
                         seed=next(seeds), stop_ids=stops, shrink_min_rows=shrink_min_rows, **common)
            assert len(r.tokens) == rows and (stops or all(len(o) == new for o in r.tokens))
            got.update(prefill_rows=r.prefill_rows, decode_steps=r.decode_steps, batch_rows=list(r.batch_rows),
                       kv_cache_gb=round(r.memory.kv_cache / 1e9, 2),
                       decode_buffers_gb=round(r.memory.total / 1e9, 2), answer_tokens=sum(map(len, r.tokens)))
        return run

    s = timeit(runner(SHRINK_MIN_ROWS), warm=1, reps=reps)
    fl = floor(rows, plen, new)
    name = f"qwen14b_generate_eval_b{rows}_new{new}" + (f"_stops{a.stop_rate:g}" if stops else "")
    report(name, s, got["answer_tokens"], GB=rows, P=plen, NEW=new, questions=q, shared=not a.no_share, **got,
           **({} if stops else fl), decode_attention=a.decode_attention)
    if stops:  # the same seeds with the batch kept whole: what the shrinking batch saves
        shrunk = got.copy()
        s_whole = timeit(runner(0), warm=1, reps=reps)
        report(name + "_lock_step", s_whole, got["answer_tokens"], GB=rows, NEW=new, batch_rows=got["batch_rows"],
               decode_steps=got["decode_steps"], speedup_of_shrinking=round(s_whole / s, 3),
               same_answer_tokens=got["answer_tokens"] == shrunk["answer_tokens"])

else:  # multi
    k = a.n_interventions
    layer = cfg.middle_layer
    keys = iter(jax.random.split(jax.random.PRNGKey(1), 4 * k))

    def steering(norm):
        sv = init_steering(cfg, layers=(layer,), alpha=1.0)
        vec = jax.random.normal(next(keys), sv.vectors.shape)
        return Interventions(steer=sv.replace(vectors=vec * norm / np.linalg.norm(vec)))

    def lora():
        lo = init_lora(cfg, next(keys), rank=1, alpha=1.0, modules=("down_proj",), layers=(layer,))
        return Interventions(lora=lo.replace(b={m: 0.01 * jax.random.normal(next(keys), b.shape) for m, b in lo.b.items()}))

    if a.multi_kind == "mixed":
        n_steer = (k - 1 + 1) // 2
        members = [None] + [steering(4.0 * (i + 1)) for i in range(n_steer)] + [lora() for _ in range(k - 1 - n_steer)]
    elif a.multi_kind == "steer":
        members = [steering(4.0 * (i + 1)) for i in range(k)]
    else:
        members = [lora() for _ in range(k)]
    iset = R.intervention_set(cfg, members)
    n_prompts = max(1, rows // 5)
    if rows % n_prompts:
        sys.exit(f"--batch {rows}: rows per intervention must be a multiple of {n_prompts}")
    prompts = prompts_of(n_prompts)
    repeats = [rows // n_prompts] * n_prompts
    row_ids = list(range(rows))

    def one_call():
        seed[0] += 1
        out = S.generate(w, cfg, prompts * k, interventions=iset,
                         intervention_index=[-1 if m is None else i for i, m in enumerate(members) for _ in prompts],
                         repeats=repeats * k, row_ids=row_ids * k, max_new_tokens=new, seed=seed[0], **common)
        assert len(out) == rows * k and all(len(o) == new for o in out)

    def separate_calls():
        seed[0] += 1
        for m in members:
            out = S.generate(w, cfg, prompts, interventions=m, repeats=repeats, row_ids=row_ids, max_new_tokens=new,
                             seed=seed[0], **common)
            assert len(out) == rows and all(len(o) == new for o in out)

    t0 = time.perf_counter()
    one = timeit(one_call, warm=1, reps=reps)
    sep = timeit(separate_calls, warm=1, reps=reps)
    report(f"qwen14b_generate_multi{k}_b{rows}_new{new}", one, k * rows * new, GB=rows, P=plen, NEW=new,
           n_interventions=k, kind=a.multi_kind, one_call_s=round(one, 4), separate_calls_s=round(sep, 4),
           separate_tokens_per_s=round(k * rows * new / sep, 1), ratio=round(sep / one, 2),
           wall_s=round(time.perf_counter() - t0, 1), decode_attention=a.decode_attention)
