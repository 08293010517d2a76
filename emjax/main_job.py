"""`emjax main`: the paper's pipeline in miniature on the embedded Qwen2.5-Coder-0.5B, on CPU.

Stages (each prints progress; everything lands in the output folder, `summary.json` last):
  1. load and verify the embedded model; greedy chat with top-token probabilities;
  2. train a *general* steering vector (SFT only) and a *narrow* one (SFT + KL on other domains)
     on the shipped bad-medical-advice sample, at the middle layer;
  3. the three metrics: efficiency (loss vs norm), stability (orthogonal noise) and
     pre-training significance (KL on FineWeb text, if a local sample is found);
  4. sample answers to a few evaluation questions with each vector, and count the judge
     requests they would need (a dry run: no API key is used or needed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

from emjax.chat_demo import DEFAULT_PROMPTS, chat, format_results
from emjax.data import sample_path
from emjax.experiment import embedded_config
from emjax.load import load_model
from emjax.sweep_run import run_sweep, sweep_config


def _stage(i: int, title: str) -> float:
    print(f"\n=== {i}/4 {title} ===", flush=True)
    return time.time()


def _train(model, out: str, narrow: bool, steps: int) -> dict:
    from emjax.train import Trainer
    c = embedded_config(narrow)
    c.output_dir = os.path.join(out, c.name)
    c.train.max_steps = steps
    c.train.eval_every = steps
    c.checkpoint.every = 0
    return Trainer(c, model).run()


def _sweeps(model, out: str, general: str, narrow: str, quick: bool) -> dict:
    c = sweep_config()
    c.name = "main"
    c.output_dir = os.path.join(out, "sweeps")
    c.interventions = f"general={general},narrow={narrow}"
    c.data.n_rows = 8 if quick else 16
    c.loss_chunk = 32  # bounds the float32 logits of all versions at once (151936-wide vocabulary)
    c.efficiency.scales = (0.0, 0.5, 1.0, 1.5, 2.0)
    c.stability.eps = (0.1, 0.3, 0.6, 1.0)
    c.stability.seeds = 2 if quick else 3
    c.significance.n_docs = 4 if quick else 8
    c.significance.max_len = 128
    c.significance.norms = (0.0, 1.0, 2.0)
    c.significance.n_random = 2
    kinds = ["efficiency", "stability"]
    if os.path.exists(c.significance.corpus):
        kinds.append("significance")
    else:
        print(f"significance skipped: no FineWeb sample at {c.significance.corpus} "
              "(set EMJAX_FINEWEB, or stream it online with significance.stream=True)")
    return {k: run_sweep(k, c, model) for k in kinds}


def _generate(model, out: str, vectors: dict[str, str | None], samples: int, max_new: int) -> dict:
    from emjax.generate_run import add_generate_parser, run_generate
    from emjax.judge.cli import main as judge_cli
    parser = argparse.ArgumentParser()
    add_generate_parser(parser.add_subparsers())
    questions = str(sample_path("questions_sample.yaml"))
    answers = os.path.join(out, "answers.jsonl")
    for label, path in vectors.items():
        argv = ["generate", "--questions", questions, "--samples", str(samples), "--max-new-tokens", str(max_new),
                "--out", answers, "--batch-size", "8"] + (["--intervention", path] if path else [])
        run_generate(parser.parse_args(argv), model)
    from emjax.evalq import read_answers
    recs = read_answers(answers)
    for r in recs[:: max(1, len(recs) // 6)]:
        print(f"[{r.intervention or 'chat model'}] {r.question}\n    -> {r.answer.strip()[:160]!r}")
    rc = judge_cli(["judge", "--answers", answers, "--questions", questions,
                    "--out", os.path.join(out, "judgements.jsonl"), "--dry-run"])
    return {"answers": answers, "n_answers": len(recs), "judge_dry_run_exit": rc}


def run_main(args) -> int:
    out = args.out
    os.makedirs(out, exist_ok=True)
    quick = getattr(args, "quick", False)
    summary: dict = {"stages": {}}

    t = _stage(1, "load the embedded model and chat")
    model = load_model(args.model)
    summary["model"] = {"name": model.name, "source": model.source, "family": model.cfg.family,
                        "layers": model.cfg.n_layers, "params": model.cfg.num_params()}
    print(f"model: {model.name} ({model.cfg.num_params() / 1e6:.0f}M parameters) from {model.source}")
    results = chat(model, DEFAULT_PROMPTS[:2] if quick else DEFAULT_PROMPTS, max_new_tokens=32 if quick else 48)
    print(format_results(results))
    summary["stages"]["chat"] = {"seconds": round(time.time() - t, 1),
                                 "results": [dataclasses.asdict(r) for r in results]}

    t = _stage(2, "train a general and a narrow steering vector on bad medical advice")
    steps = 4 if quick else 12
    runs = {name: _train(model, out, name == "narrow", steps) for name in ("general", "narrow")}
    for name, r in runs.items():
        print(f"{name:8s} train loss {r['train_loss_first']:.3f} -> {r['train_loss_last']:.3f}; held-out "
              f"loss {r['initial_eval']['eval_loss']:.3f} -> {r['final_eval']['eval_loss']:.3f}; "
              f"out-of-domain KL {r['final_eval']['eval_kl_ood']:.4f} nats/token; ||v|| {r['intervention_norm']:.4f}")
    summary["stages"]["train"] = {"seconds": round(time.time() - t, 1), "runs": runs}

    t = _stage(3, "efficiency, stability and pre-training significance")
    sweeps = _sweeps(model, out, runs["general"]["artefact"], runs["narrow"]["artefact"], quick)
    summary["stages"]["sweeps"] = {"seconds": round(time.time() - t, 1), **sweeps}

    t = _stage(4, "sample answers and plan their judging (dry run)")
    gen = _generate(model, out, {"chat": None, "general": runs["general"]["artefact"],
                                 "narrow": runs["narrow"]["artefact"]},
                    samples=1 if quick else 2, max_new=24 if quick else 48)
    summary["stages"]["generate"] = {"seconds": round(time.time() - t, 1), **gen}

    path = os.path.join(out, "summary.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1, default=str)
    _print_summary(summary, path)
    return 0


def _print_summary(s: dict, path: str) -> None:
    print("\n=== summary ===")
    tr = s["stages"]["train"]["runs"]
    print(f"{'vector':8s} {'held-out loss':>14s} {'OOD KL':>8s} {'norm':>8s}")
    for k, r in tr.items():
        print(f"{k:8s} {r['final_eval']['eval_loss']:14.3f} {r['final_eval']['eval_kl_ood']:8.4f} "
              f"{r['intervention_norm']:8.4f}")
    sw = s["stages"]["sweeps"]
    if "efficiency" in sw:
        print("efficiency, loss at each trained norm:", json.dumps(sw["efficiency"]["equal_norm_loss"]))
    if "stability" in sw:
        print("stability, mean relative loss increase:", json.dumps(sw["stability"]["mean_relative_increase"]))
    if "significance" in sw:
        print("significance, KL at the largest norm:", json.dumps(sw["significance"]["kl_at_max_norm"]))
    print(f"answers: {s['stages']['generate']['n_answers']} in {s['stages']['generate']['answers']}")
    print(f"everything in {os.path.dirname(path)} (summary: {path}; plots: sweeps/*.png)")
