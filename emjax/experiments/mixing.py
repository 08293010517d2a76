"""`emjax experiment mixing`: the data-mixing baseline at several fractions, each trained for the
same number of optimiser steps, compared on held-out in-domain loss, out-of-domain KL, and the EM
and narrow rates of their answers.

    run_mixing(load_config("configs/embedded_steering_mix_fractions.py"), "runs/mixing",
               BehaviourEval(judge_url="http://127.0.0.1:8000/v1"))

The config is a training config with a `mix_fractions` tuple (e.g. configs/
steering_mix_fractions_medical.py): each fraction f is the config with data.mix_fraction = f
(f = 0: the general run, no aligned rows) and train.max_steps steps. A fraction's training set is
its bad rows plus f / (1 - f) as many aligned rows, so larger fractions run fewer epochs over
more rows in the same steps; a run whose data would give fewer than train.max_steps steps is
refused before it trains. The aligned rows never share a prompt with the KL set, and the held-out
KL rows are the same for every fraction (emjax.train.inputs.prepare_data).

Stages (each leaves `OUT/stages/<i>.json`; a rerun into the same folder reuses finished ones):
  1..F  one run per fraction into OUT/runs/mix<f>/ (resumes from its checkpoints);
  F+1   answers of the chat model and every fraction's intervention (emjax.experiments.behaviour);
  F+2   the judge;
  F+3   the table and plot (summary.md, mixing.png, summary.json): per fraction the held-out
        in-domain loss, the out-of-domain KL, the EM and narrow rates.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from typing import Any

import ml_collections

from emjax.checkpoints.load import LoadedModel
from emjax.experiments import ExperimentConfigError
from emjax.eval.report import number_cell, rate_cell
from emjax.eval.report_plots import plot_rates_along
from emjax.experiments.behaviour import (CHAT_LABEL, BehaviourEval, answer_questions, evaluation_lines,
                                         judge_answers, mix_fractions, rates_by_label, rates_lines,
                                         write_experiment)
from emjax.jobs.main import run_stage
from emjax.train.kl_set import normalise_prompt
from emjax.train.trainer import Trainer


def fraction_label(f: float) -> str:
    return f"mix {f:g}"


def fraction_config(config: ml_collections.ConfigDict, f: float, out: str) -> ml_collections.ConfigDict:
    """The run of fraction f: the config with data.mix_fraction = f, into OUT/runs/mix<f>/."""
    c = copy.deepcopy(config)
    c.data.mix_fraction = float(f)
    c.name = f"{config.name}_mix{f:g}"
    c.output_dir = os.path.join(out, "runs", f"mix{f:g}")
    return c


def _prompts_digest(prompts: list[str]) -> str:
    return hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16]


def train_fraction(model: LoadedModel, c: ml_collections.ConfigDict) -> dict[str, Any]:
    """Trains one fraction's run for exactly train.max_steps steps; returns its summary with the
    overlap check of its data (KL prompts among its training prompts: 0 by construction)."""
    trainer = Trainer(c, model)
    if trainer.total_steps != c.train.max_steps:
        raise ExperimentConfigError(
            f"mix fraction {c.data.mix_fraction:g}: {len(trainer.data.train)} training rows give "
            f"{trainer.total_steps} steps of {trainer.rows_per_step} rows in train.epochs={c.train.epochs}, fewer "
            f"than train.max_steps={c.train.max_steps}: raise train.epochs (or lower train.max_steps)")
    p = trainer.data.prompts
    training = set(map(normalise_prompt, p["train"] + p["eval"]))
    summary = trainer.run()
    summary.update(
        fraction=c.data.mix_fraction, n_train_rows=len(trainer.data.train), rows_per_step=trainer.rows_per_step,
        kl_prompts_in_training={part: len(training & set(map(normalise_prompt, p.get(part, []))))
                                for part in ("kl", "kl_eval")},
        kl_eval_prompts_sha256=_prompts_digest(p.get("kl_eval", [])))
    print(f"mix {c.data.mix_fraction:g}: {summary['steps']} steps over {summary['n_train_rows']} rows; held-out loss "
          f"{summary['final_eval'].get('eval_loss', float('nan')):.3f}, out-of-domain KL "
          f"{summary['final_eval'].get('eval_kl_ood', float('nan')):.4f}; KL prompts among the training prompts: "
          f"{summary['kl_prompts_in_training']}")
    return summary


def run_mixing(config: ml_collections.ConfigDict, out: str, ev: BehaviourEval,
               model: LoadedModel | None = None) -> dict[str, Any]:
    """Runs the stages into `out` (see the module docstring); returns the summary (also
    summary.json and summary.md)."""
    from emjax.checkpoints.load import model_on_mesh
    from emjax.model.config import dtype_from_name

    fractions = mix_fractions(config)
    os.makedirs(out, exist_ok=True)
    # loaded once, straight onto the runs' mesh (each Trainer finds it there)
    model, _ = model_on_mesh(model or config.model.source, config.mesh, dtype=dtype_from_name(config.model.dtype))
    ev = ev.sharing(model, config.model.source, config.mesh)
    n_stages = len(fractions) + 3
    runs = {}
    for i, f in enumerate(fractions, start=1):
        c = fraction_config(config, f, out)
        runs[fraction_label(f)] = run_stage(out, i, n_stages, f"train at mix fraction {f:g}, "
                                            f"{config.train.max_steps} steps", lambda c=c: train_fraction(model, c))
    vectors = {CHAT_LABEL: None, **{label: r["artefact"] for label, r in runs.items()}}
    k = len(fractions)
    gen = run_stage(out, k + 1, n_stages, "answers to the general and the in-domain questions",
                    lambda: answer_questions(model, out, vectors, ev))
    j = run_stage(out, k + 2, n_stages, "judge: aligned, coherent, correct", lambda: judge_answers(out, gen, ev))
    rates = run_stage(out, k + 3, n_stages, "rates per fraction", lambda: rates_by_label(out, gen, j))
    summary = {"config": config.name, "model": {"name": model.name, "source": model.source},
               "fractions": list(fractions), "max_steps": config.train.max_steps, "eval": ev.describe(),
               "runs": runs, "answers": gen, "judge": j, "rates": rates}
    summary["table"] = fraction_table(summary)
    summary["plot"] = plot_fractions(summary, os.path.join(out, "mixing.png"))
    return write_experiment(out, summary, write_summary_md, table_lines)


def fraction_table(s: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per fraction: steps, rows, loss, KL, the overlap check and the rates."""
    rates = (s["rates"].get("rates") or {})
    rows = []
    for f in s["fractions"]:
        r = s["runs"][fraction_label(f)]
        rows.append({"fraction": f, "steps": r["steps"], "n_train_rows": r["n_train_rows"],
                     "eval_loss": r["final_eval"].get("eval_loss"), "eval_kl_ood": r["final_eval"].get("eval_kl_ood"),
                     "kl_eval_prompts_in_training": r["kl_prompts_in_training"]["kl_eval"],
                     "kl_eval_prompts_sha256": r["kl_eval_prompts_sha256"],
                     **{k: v for k, v in (rates.get(fraction_label(f)) or {}).items() if k != "group"}})
    return rows


def table_lines(s: dict[str, Any]) -> list[str]:
    """The markdown table of `fraction_table`, with the chat model's rates below it."""
    rates = s["rates"].get("rates") or {}
    lines = ["| mix fraction | steps | training rows | held-out in-domain loss | out-of-domain KL, nats/token "
             "| KL-eval prompts among training prompts | EM rate | narrow rate | coherent |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in s["table"]:
        lines.append(f"| {r['fraction']:g} | {r['steps']} | {r['n_train_rows']} | {number_cell(r['eval_loss'])} | "
                     f"{number_cell(r['eval_kl_ood'], '.4f')} | {r['kl_eval_prompts_in_training']} | "
                     f"{rate_cell(r, 'em_rate')} | {rate_cell(r, 'narrow_rate')} | {rate_cell(r, 'coherence_rate')} |")
    chat = rates.get(CHAT_LABEL)
    if chat:
        lines.append(f"| chat model (no training) | | | | | | {rate_cell(chat, 'em_rate')} | "
                     f"{rate_cell(chat, 'narrow_rate')} | {rate_cell(chat, 'coherence_rate')} |")
    return lines


def plot_fractions(s: dict[str, Any], path: str) -> str | None:
    """EM and narrow rates against the fraction (the chat model's as lines), beside the
    out-of-domain KL and the held-out in-domain loss."""
    t = s["table"]
    x = [r["fraction"] for r in t]
    rates = s["rates"].get("rates") or {}
    panels = {"out-of-domain KL, nats/token": {"KL": (x, [r["eval_kl_ood"] for r in t])},
              "held-out in-domain loss": {"loss": (x, [r["eval_loss"] for r in t])}}
    refs = {CHAT_LABEL: rates[CHAT_LABEL]} if CHAT_LABEL in rates else {}
    return plot_rates_along(x, t, path, "fraction of aligned rows in training", panels, refs,
                            title=f"data mixing at {s['max_steps']} steps each ({s['model']['name']})")


def write_summary_md(s: dict[str, Any], path: str) -> str:
    lines = ["# Data mixing at several fractions", "",
             f"Model: {s['model']['name']} ({s['model']['source']}); config `{s['config']}`; every fraction trained "
             f"for {s['max_steps']} optimiser steps. The held-out KL rows are the same for every fraction "
             f"(prompt digests: {sorted({r['kl_eval_prompts_sha256'] for r in s['table']})}) and share no prompt with "
             "any fraction's training rows (column 6).", ""]
    lines += evaluation_lines(s)
    lines += table_lines(s)
    lines += rates_lines(s)
    lines += ["", f"Plot: `{os.path.basename(s['plot'])}`." if s["plot"] else ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path

