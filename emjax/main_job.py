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

import dataclasses
import json
import os
import time
from pathlib import Path

from emjax.checkpoints.load import LoadedModel, load_model
from emjax.configuration import load_config
from emjax.data.conversations import sample_path
from emjax.errors import EmjaxError
from emjax.eval.chat import DEFAULT_PROMPTS, chat, format_results
from emjax.eval.generate import SamplingSettings, generate
from emjax.eval.judge.stage import AnswerSelection, judge
from emjax.eval.records import read_answers
from emjax.metrics.runner import sweep
from emjax.model.schema import num_params
from emjax.train.trainer import Trainer

# The configs/ folder of the source tree: the main job runs configs/embedded_steering_*.py and
# configs/sweep_default.py with a few overrides of its own (fewer steps, a smaller sweep).
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def _config(name: str, overrides: list[str]):
    path = CONFIG_DIR / name
    if not path.is_file():
        raise EmjaxError(f"emjax main needs {path} (the configs/ folder of the emjax source tree); "
                         "install emjax from its checkout (pip install -e .)")
    return load_config(str(path), overrides)


def _stage(i: int, title: str) -> float:
    print(f"\n=== {i}/4 {title} ===", flush=True)
    return time.time()


def _train(model: LoadedModel, out: str, narrow: bool, steps: int) -> dict:
    name = "narrow" if narrow else "general"
    c = _config(f"embedded_steering_{name}.py", [
        f"output_dir={os.path.join(out, f'embedded_steering_{name}_medical')}", f"train.max_steps={steps}",
        f"train.eval_every={steps}"])
    c.checkpoint.every = None  # the main job checkpoints only at the end
    return Trainer(c, model).run()


def _sweeps(model: LoadedModel, out: str, general: str, narrow: str, quick: bool) -> dict:
    c = _config("sweep_default.py", [
        "name=main", f"output_dir={os.path.join(out, 'sweeps')}", f"interventions=general={general},narrow={narrow}",
        f"data.n_rows={8 if quick else 16}",
        "loss_chunk=32",  # bounds the float32 logits of all versions at once (151936-wide vocabulary)
        "efficiency.scales=(0.0, 0.5, 1.0, 1.5, 2.0)", "stability.eps=(0.1, 0.3, 0.6, 1.0)",
        f"stability.seeds={2 if quick else 3}", f"significance.n_docs={4 if quick else 8}",
        "significance.max_len=128", "significance.norms=(0.0, 1.0, 2.0)", "significance.n_random=2"])
    kinds = ["efficiency", "stability"]
    if os.path.exists(c.significance.corpus):
        kinds.append("significance")
    else:
        print(f"significance skipped: no FineWeb sample at {c.significance.corpus} "
              "(set EMJAX_FINEWEB, or stream it online with significance.stream=True)")
    return sweep(c, kinds, model)


def _generate(model: LoadedModel, out: str, vectors: dict[str, str | None], samples: int, max_new: int) -> dict:
    questions = str(sample_path("questions_sample.yaml"))
    answers = os.path.join(out, "answers.jsonl")
    for path in vectors.values():
        generate(model, questions, answers, intervention=path,
                 sampling=SamplingSettings(samples=samples, max_new_tokens=max_new, batch_size=8))
    recs = read_answers(answers)
    for r in recs[:: max(1, len(recs) // 6)]:
        print(f"[{r.intervention or 'chat model'}] {r.question}\n    -> {r.answer.strip()[:160]!r}")
    plan = judge(AnswerSelection(answers=[answers], questions=[questions]),
                 os.path.join(out, "judgements.jsonl"), dry_run=True)
    print(json.dumps(plan, indent=2))
    return {"answers": answers, "n_answers": len(recs), "judge_dry_run": plan}


def run_main(out: str = "runs/main", *, model: str = "embedded", quick: bool = False) -> dict:
    """Runs the four stages into `out` and returns the summary (also written to summary.json)."""
    os.makedirs(out, exist_ok=True)
    summary: dict = {"stages": {}}

    t = _stage(1, "load the embedded model and chat")
    model = load_model(model)
    n_params = num_params(model.cfg)
    summary["model"] = {"name": model.name, "source": model.source, "family": model.cfg.family,
                        "layers": model.cfg.n_layers, "params": n_params}
    print(f"model: {model.name} ({n_params / 1e6:.0f}M parameters) from {model.source}")
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
    return summary


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
