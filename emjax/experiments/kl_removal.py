"""`emjax experiment kl-removal`: KL removal with behaviour. The narrow solution, trained on with
the KL term removed (configs/embedded_steering_kl_removal.py, configs/paper_14b.py:KIND,kl_removal,DOMAIN;
recipe paper_14b.kl_removal), is judged at
each snapshot of the continuation, so the EM and narrow rates along the continuation sit beside
its cosine with, and length along, the general solution and its own narrow start.

    config, base = load_kl_removal_configs("configs/embedded_steering_kl_removal.py")
    run_kl_removal(config, base, "runs/kl_removal", BehaviourEval(judge_url="http://127.0.0.1:8000/v1"))

The KL-removal config names the two runs it starts from in its `base_runs` section (config files
beside it, FILE.py or FILE.py:ARG: `narrow`, the run continued; `general`, the drift reference). All three runs are
trained into OUT/runs/{narrow,general,kl_removal}/, the continuation starting from OUT's narrow
vector with OUT's general and narrow vectors as its references (intervention.init_from and
train.reference are set to them).

Stages (each leaves `OUT/stages/<i>.json`; a rerun into the same folder reuses finished ones):
  1. the narrow run;  2. the general run;
  3. the continuation without KL, a snapshot every checkpoint.snapshot_every steps;
  4. answers of the chat model, the general vector, the narrow start (step 0), every snapshot and
     the final vector (emjax.experiments.behaviour, all in one sampler call per question file);
  5. the judge;
  6. the table and plot (summary.md, kl_removal.png): per step the cosine and projection with
     each reference (emjax.directions.drift) and the EM and narrow rates.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any, Mapping, Sequence

import ml_collections

from emjax.checkpoints.load import LoadedModel
from emjax.configuration import split_config_path
from emjax.directions.drift import drift_at, drift_table, snapshot_paths
from emjax.eval.report import number_cell, rate_cell
from emjax.eval.report_plots import plot_rates_along
from emjax.experiments.behaviour import (CHAT_LABEL, BehaviourEval, answer_questions, evaluation_lines,
                                         judge_answers, rates_by_label, rates_lines,
                                         write_experiment)
from emjax.experiments import ExperimentConfigError
from emjax.interventions.files import load_interventions
from emjax.jobs.main import run_stage
from emjax.train.preflight import load_train_config
from emjax.train.trainer import Trainer

BASE_RUNS = ("narrow", "general")
GENERAL_LABEL = "general"
N_STAGES = 6


def load_kl_removal_configs(path: str, overrides: Sequence[str] = (), base_overrides: Sequence[str] = ()
                            ) -> tuple[ml_collections.ConfigDict, dict[str, ml_collections.ConfigDict]]:
    """The KL-removal config at `path` (with `overrides`) and the configs of its `base_runs`
    (files beside it, with `base_overrides`), by role: {"narrow": ..., "general": ...}."""
    config = load_train_config(path, overrides)
    if "base_runs" not in config or any(r not in config.base_runs for r in BASE_RUNS):
        raise ExperimentConfigError(f"{path}: no base_runs section naming the narrow and the general run's config "
                                    "files, e.g. c.base_runs = ml_collections.ConfigDict({'narrow': "
                                    "'embedded_steering_narrow.py', 'general': 'embedded_steering_general.py'})")
    folder = os.path.dirname(os.path.abspath(split_config_path(path)[0]))  # "FILE.py:ARG" names FILE.py
    base = {r: load_train_config(os.path.join(folder, config.base_runs[r]), base_overrides) for r in BASE_RUNS}
    return config, base


def _artefact(c: ml_collections.ConfigDict) -> str:
    return os.path.join(c.output_dir, "steering.safetensors" if c.intervention.kind == "steering" else "lora")


def wire_runs(config: ml_collections.ConfigDict, base: Mapping[str, ml_collections.ConfigDict], out: str
              ) -> tuple[ml_collections.ConfigDict, dict[str, ml_collections.ConfigDict]]:
    """Copies of the three configs writing into OUT/runs/, the continuation starting from OUT's
    narrow vector and logging its drift toward OUT's general and narrow vectors."""
    if config.checkpoint.snapshot_every is None:
        raise ExperimentConfigError("checkpoint.snapshot_every is None: the KL-removal experiment judges the "
                                    "continuation's snapshots; set it (e.g. a quarter of the run's steps)")
    runs = {}
    for role in BASE_RUNS:
        runs[role] = copy.deepcopy(base[role])
        runs[role].output_dir = os.path.join(out, "runs", role)
    c = copy.deepcopy(config)
    c.output_dir = os.path.join(out, "runs", "kl_removal")
    c.intervention.init_from = _artefact(runs["narrow"])
    c.train.reference = f"general={_artefact(runs['general'])},narrow={_artefact(runs['narrow'])}"
    return c, runs


def _train(model: LoadedModel, c: ml_collections.ConfigDict) -> dict[str, Any]:
    return Trainer(c, model).run()


def judged_points(run: Mapping[str, Any], narrow: Mapping[str, Any]) -> dict[int, str]:
    """step -> intervention file of every point judged along the continuation: its start (the
    narrow vector, step 0), each snapshot, and the final vector."""
    points = {0: narrow["artefact"], **snapshot_paths(os.path.dirname(run["artefact"]))}
    points.setdefault(int(run["steps"]), run["artefact"])
    return points


def step_label(step: int) -> str:
    return f"step {step}"


def run_kl_removal(config: ml_collections.ConfigDict, base: Mapping[str, ml_collections.ConfigDict], out: str,
                   ev: BehaviourEval, model: LoadedModel | None = None) -> dict[str, Any]:
    """Runs the six stages into `out` (see the module docstring); returns the summary (also
    summary.json and summary.md)."""
    from emjax.checkpoints.load import model_on_mesh
    from emjax.model.config import dtype_from_name

    c, runs = wire_runs(config, base, out)
    os.makedirs(out, exist_ok=True)
    # loaded once, straight onto the runs' mesh (each Trainer finds it there)
    model, _ = model_on_mesh(model or c.model.source, c.mesh, dtype=dtype_from_name(c.model.dtype))
    ev = ev.sharing(model, c.model.source, c.mesh)
    trained = {}
    for i, role in enumerate(BASE_RUNS, start=1):
        trained[role] = run_stage(out, i, N_STAGES, f"the {role} run ({base[role].name})",
                                  lambda role=role: _train(model, runs[role]))
    trained["kl_removal"] = run_stage(out, 3, N_STAGES, f"the narrow run continued without KL ({config.name}), "
                                      f"a snapshot every {c.checkpoint.snapshot_every} steps", lambda: _train(model, c))
    points = judged_points(trained["kl_removal"], trained["narrow"])
    vectors = {CHAT_LABEL: None, GENERAL_LABEL: trained["general"]["artefact"],
               **{step_label(s): p for s, p in points.items()}}
    gen = run_stage(out, 4, N_STAGES, f"answers at {len(points)} points of the continuation, the general vector "
                    "and the chat model", lambda: answer_questions(model, out, vectors, ev))
    j = run_stage(out, 5, N_STAGES, "judge: aligned, coherent, correct", lambda: judge_answers(out, gen, ev))
    rates = run_stage(out, 6, N_STAGES, "rates per step", lambda: rates_by_label(out, gen, j))
    refs = load_interventions(c.train.reference, model.cfg)
    drift = drift_at(points, refs, model.cfg)
    summary = {"config": config.name, "model": {"name": model.name, "source": model.source},
               "lambda_kl": c.train.lambda_kl, "snapshot_every": c.checkpoint.snapshot_every,
               "references": c.train.reference, "eval": ev.describe(), "runs": trained, "answers": gen,
               "judge": j, "rates": rates}
    summary["table"] = step_table(drift.to_dict("records"), rates.get("rates") or {})
    summary["plot"] = plot_steps(summary, _logged_drift(c.output_dir), os.path.join(out, "kl_removal.png"))
    return write_experiment(out, summary, write_summary_md, table_lines)


def _logged_drift(run_dir: str) -> list[dict[str, Any]]:
    """The drift the continuation logged at its evaluations (empty if it logged none)."""
    try:
        return drift_table(run_dir).to_dict("records")
    except ValueError:
        return []


def step_table(drift: Sequence[Mapping[str, Any]], rates: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per judged step: its drift columns and its rates."""
    return [{**d, "step": int(d["step"]),
             **{k: v for k, v in (rates.get(step_label(int(d["step"]))) or {}).items() if k != "group"}}
            for d in drift]


def table_lines(s: Mapping[str, Any]) -> list[str]:
    """The markdown table of `step_table`, with the general vector's and the chat model's rates."""
    rates = s["rates"].get("rates") or {}
    lines = ["| step | cos with general | length along general | cos with narrow start | EM rate | narrow rate "
             "| coherent |", "|---|---|---|---|---|---|---|"]
    for r in s["table"]:
        drift = " | ".join(number_cell(r.get(k)) for k in ("cos_general", "proj_general", "cos_narrow"))
        lines.append(f"| {r['step']} | {drift} | {rate_cell(r, 'em_rate')} | {rate_cell(r, 'narrow_rate')} "
                     f"| {rate_cell(r, 'coherence_rate')} |")
    for label, name in ((GENERAL_LABEL, "general vector"), (CHAT_LABEL, "chat model")):
        if label in rates:
            r = rates[label]
            lines.append(f"| {name} | | | | {rate_cell(r, 'em_rate')} | {rate_cell(r, 'narrow_rate')} | "
                         f"{rate_cell(r, 'coherence_rate')} |")
    return lines


def plot_steps(s: Mapping[str, Any], logged: Sequence[Mapping[str, Any]], path: str) -> str:
    """EM and narrow rates against the step (the general vector's and the chat model's as lines),
    beside the cosine and the projection with each reference: at the judged steps, and at every
    evaluation the run logged."""
    t = s["table"]
    points = {int(r["step"]): r for r in list(logged) + list(t)}  # judged steps' exact values win
    steps = sorted(points)
    panels = {}
    for prefix, ylabel in (("cos_", "cosine with reference"), ("proj_", "length along reference (update norm)")):
        cols = sorted({k for r in t for k in r if k.startswith(prefix)})
        panels[ylabel] = {col[len(prefix):]: (steps, [points[st].get(col, math.nan) for st in steps]) for col in cols}
    rates = s["rates"].get("rates") or {}
    refs = {name: rates[label] for label, name in ((GENERAL_LABEL, "general vector"), (CHAT_LABEL, "chat model"))
            if label in rates}
    return plot_rates_along([r["step"] for r in t], t, path, "step of the continuation without KL", panels, refs,
                            title=f"KL removal ({s['model']['name']}): behaviour and drift along the continuation")


def write_summary_md(s: Mapping[str, Any], path: str) -> str:
    run = s["runs"]["kl_removal"]
    lines = ["# KL removal with behaviour", "",
             f"Model: {s['model']['name']} ({s['model']['source']}); config `{s['config']}`: the narrow vector "
             f"(`{s['runs']['narrow']['artefact']}`) trained on for {run['steps']} steps with lambda "
             f"{s['lambda_kl']:g}, a snapshot every {s['snapshot_every']} steps; references {s['references']}.", ""]
    lines += evaluation_lines(s)
    lines += table_lines(s)
    lines += rates_lines(s)
    lines += ["", f"Plot: `{os.path.basename(s['plot'])}`."]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path
