"""The behaviour of labelled interventions, as the experiments measure it: answers to the general
(EM) questions and to held-out questions of the training domain, the judge, and the EM and narrow
rates per label. Each step is an existing stage called with the experiment's labels:

    ev = BehaviourEval(judge_url="http://127.0.0.1:8000/v1", judge_model="judge")
    gen = answer_questions(model, "runs/x", {"chat": None, "mix 0.5": "runs/x/mix0.5/steering.safetensors"}, ev)
    j = judge_answers("runs/x", gen, ev)             # emjax.eval.judge (API), local_judge, or a dry run
    rates = rates_by_label("runs/x", gen, j)         # emjax.eval.report: {label: EM, narrow, coherent}

Every intervention's rows go through one sampler call per question file (emjax.inference.generate); a
rerun skips answers and judge requests already on disk.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping

import ml_collections

from emjax.checkpoints.load import LoadedModel
from emjax.data.conversations import sample_path
from emjax.experiments import ExperimentConfigError
from emjax.eval.conventions import NARROW_METRIC, PAPER_METRICS, Thresholds
from emjax.eval.domains import DOMAINS
from emjax.inference.generate import SamplingSettings, generate
from emjax.eval.judge.request import RequestConfig
from emjax.eval.judge.stage import judge
from emjax.eval.questions import load_questions
from emjax.eval.records import read_answers
from emjax.eval.report import build_report, judged_frame
from emjax.eval.selection import AnswerSelection

METRICS = PAPER_METRICS
CHAT_LABEL = "chat"


@dataclasses.dataclass(frozen=True)
class BehaviourEval:
    """What the behaviour evaluation asks.

    em_questions: the general questions (default: the shipped questions_sample.yaml, four of the
      paper's kind; the paper's are upstream's first_plot_questions.yaml, cut to its eight).
    domain: training domain whose held-out bank (emjax.eval.domains) gives the narrow questions;
      n_domain_questions: its first N questions (None: all 45).
    sampling: samples per question, new tokens, temperature (emjax.inference.generate; default the
      paper's 50 samples of 600 tokens).
    judge_url / judge_model: an OpenAI-compatible server; local_judge: a model source or loaded
      model judging by prefill (emjax.inference.local_judge); neither: a dry run (no rates).
    mesh: device mesh of sampling and of the local judge (emjax.model.mesh_plan); the experiments
      set it to their training config's `mesh`.
    """

    em_questions: str | None = None
    domain: str = "medical"
    n_domain_questions: int | None = None
    sampling: SamplingSettings = SamplingSettings()
    judge_url: str | None = None
    judge_model: str | None = None
    local_judge: str | LoadedModel | None = None
    api_key_env: str = "OPENAI_API_KEY"
    mesh: str | None = None

    def question_files(self) -> tuple[str, str]:
        """(general question file, the domain's held-out bank)."""
        em = self.em_questions or str(sample_path("questions_sample.yaml"))
        return em, str(DOMAINS[self.domain].bank_path())

    def sharing(self, model: LoadedModel, source: str, mesh: str | None) -> "BehaviourEval":
        """These settings on the experiment's mesh, with its already loaded `model` (from `source`)
        as the local judge where the local judge is that model (loaded once)."""
        same = isinstance(self.local_judge, str) and self.local_judge in (source, model.source)
        return dataclasses.replace(self, mesh=mesh, local_judge=model if same else self.local_judge)

    def describe(self) -> dict[str, Any]:
        """The settings as plain values (the local judge by name), for the summaries."""
        d = dataclasses.asdict(dataclasses.replace(self, local_judge=None))
        d["local_judge"] = getattr(self.local_judge, "source", self.local_judge)
        return d


def answer_questions(model: LoadedModel, out: str, interventions: Mapping[str, str | None],
                     ev: BehaviourEval) -> dict[str, Any]:
    """Answers of every labelled intervention (None: the chat model) to the general questions and
    to the domain's held-out questions, appended to `out`/answers.jsonl."""
    em_q, domain_q = ev.question_files()
    domain_ids = [q.id for q in load_questions(domain_q)][: ev.n_domain_questions]
    answers = os.path.join(out, "answers.jsonl")
    # a stage run again (other settings, retrained interventions) sets the earlier answers aside
    generate(model, em_q, answers, interventions=dict(interventions), sampling=ev.sampling, mesh=ev.mesh,
             set_aside=True)
    generate(model, domain_q, answers, interventions=dict(interventions), sampling=ev.sampling, include=domain_ids,
             mesh=ev.mesh, set_aside=True)
    # generate records an intervention as "<path> x<scale>" ("" for the chat model): back to the labels
    labels = {(f"{path} x1" if path else ""): label for label, path in interventions.items()}
    return {"answers": answers, "n_answers": len(read_answers(answers)), "em_questions": em_q,
            "domain_questions": domain_q, "domain_question_ids": domain_ids, "labels": labels}


def _selection(gen: Mapping[str, Any]) -> AnswerSelection:
    return AnswerSelection(answers=[gen["answers"]], questions=[gen["em_questions"], gen["domain_questions"]])


def judge_answers(out: str, gen: Mapping[str, Any], ev: BehaviourEval) -> dict[str, Any]:
    """Scores every answer on METRICS (aligned, coherent, the domain's correctness) into
    `out`/judgements.jsonl: through `ev.judge_url`, the local judge, or a dry run."""
    sel = _selection(gen)
    judgements = os.path.join(out, "judgements.jsonl")
    if ev.local_judge is not None:
        from emjax.inference.local_judge.stage import LocalJudgeConfig, judge_local
        stats = judge_local(sel, judgements, ev.local_judge, metrics=METRICS, judge_model=ev.judge_model,
                            config=LocalJudgeConfig(progress=True, mesh=ev.mesh))
        return {"mode": "local", "judge_model": stats["judge_model"], "stats": stats, "judgements": judgements}
    if ev.judge_url is None:
        plan = judge(sel, judgements, metrics=METRICS, dry_run=True)
        print(json.dumps(plan, indent=1))
        return {"mode": "dry_run", "dry_run": plan, "judge_model": None, "judgements": judgements}
    if not os.environ.get(ev.api_key_env):  # a local server needs no key, but the client wants one
        os.environ[ev.api_key_env] = "unused-local-key"
    name = ev.judge_model or "judge"
    stats = judge(sel, judgements, metrics=METRICS, judge_model=name,
                  request=RequestConfig(model=name, base_url=ev.judge_url, api_key_env=ev.api_key_env))
    if stats["n_left_failed"]:  # the stage still finishes: those answers count as unscored in the rates
        print(f"warning: {stats['n_left_failed']} judge requests failed: their answers are left out of the rates "
              f"(n_unscored in the report); `emjax judge` on {judgements} re-sends them")
    return {"mode": "api", "url": ev.judge_url, "judge_model": name, "stats": stats, "judgements": judgements}


def rates_by_label(out: str, gen: Mapping[str, Any], j: Mapping[str, Any]) -> dict[str, Any]:
    """The report (emjax.eval.report, into `out`/report/) grouped by label: {"rates": {label: row}}
    with each row's em_rate / narrow_rate / coherence_rate, their 95% bootstrap interval and
    denominator; None rates after a dry run."""
    if j["judge_model"] is None:
        return {"rates": None, "note": "dry run of the judge: no scores, no rates"}
    from emjax.eval.judge.store import ResultStore

    em_q = AnswerSelection(answers=[gen["answers"]], questions=[gen["em_questions"]])
    df, _ = judged_frame(em_q, ResultStore(j["judgements"]), list(METRICS), j["judge_model"],
                         [gen["domain_questions"]])
    df["intervention"] = [gen["labels"].get(v, v) for v in df["intervention"]]
    report_dir = os.path.join(out, "report")
    rep = build_report(df, report_dir, Thresholds(), NARROW_METRIC, group_by=("intervention",),
                       extra={"judge_model": j["judge_model"], "judgements": [j["judgements"]]})
    with open(os.path.join(report_dir, "rates.md"), encoding="utf-8") as f:
        table_md = f.read()
    return {"rates": {r["group"]: r for r in rep["rates"]}, "thresholds": rep["thresholds"],
            "report_dir": report_dir, "rates_md": table_md}


def evaluation_lines(s: Mapping[str, Any]) -> list[str]:
    """The summary.md sentence saying what was asked and who judged (`s`: an experiment's summary)."""
    ev, j = s["eval"], s["judge"]
    return [f"EM on {os.path.basename(s['answers']['em_questions'])}, narrow on the first "
            f"{len(s['answers']['domain_question_ids'])} questions of the {ev['domain']} held-out bank; "
            f"{ev['sampling']['samples']} samples per question and intervention, {ev['sampling']['max_new_tokens']} "
            f"new tokens; judge: {j['mode']} ({j.get('judge_model')}).", ""]


def rates_lines(s: Mapping[str, Any]) -> list[str]:
    """The summary.md lines under an experiment's table: what the rates are, or that the judge was a dry run."""
    if s["rates"].get("rates") is None:
        return ["", f"Dry run of the judge: {s['judge']['dry_run']['n_pending']} requests would be sent; no rates."]
    t = s["rates"]["thresholds"]
    return ["", f"Rates: {t['em']} (EM); {t['narrow']} (narrow); 95% bootstrap intervals; the report is in "
                f"`{s['rates']['report_dir']}`."]


def write_experiment(out: str, summary: dict[str, Any], write_md: Callable[[dict[str, Any], str], str],
                     table_lines: Callable[[dict[str, Any]], list[str]]) -> dict[str, Any]:
    """An experiment's last stage: summary.json and summary.md (`write_md`) in `out`, its table and where
    everything is printed; returns the summary."""
    with open(os.path.join(out, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=1, default=str)
    md = write_md(summary, os.path.join(out, "summary.md"))
    print("\n" + "\n".join(table_lines(summary)))
    print(f"\neverything in {out} (summary: {md}, plot: {summary['plot']})")
    return summary


def check_experiment_inputs(config, base: list, out: str, evaluation: BehaviourEval, *,
                            continuation: bool = False) -> None:
    """What an experiment reads, checked before any model loads: the output folder, the judge
    options and the local judge's source, the question files, and each training config
    (`emjax.train.preflight.check_train_inputs`, its output_dir replaced by `out` where the
    experiment writes). `config` is the mixing config (its mix_fractions checked and the data mix of
    its largest fraction), or with `continuation` the KL-removal continuation (its start and
    references are the base runs' artefacts, made by the experiment); `base`: the base runs' configs."""
    import copy

    from emjax.checkpoints.load import source_config
    from emjax.data.locations import check_writable_dir
    from emjax.jobs.main import check_judge_target
    from emjax.train.preflight import check_train_inputs

    check_writable_dir(out, "--out")
    local = evaluation.local_judge if isinstance(evaluation.local_judge, str) else None
    check_judge_target(evaluation.judge_url, evaluation.judge_model, local)
    if local is not None:
        source_config(local)
    for path in evaluation.question_files():
        load_questions(path)
    runs = []
    for c in (config, *base):
        c = copy.deepcopy(c)
        c.output_dir = out
        runs.append(c)
    if continuation:
        runs[0].intervention.init_from = None
        runs[0].train.reference = None
    else:
        mixed = [f for f in mix_fractions(config) if f > 0]
        if mixed:
            runs[0].data.mix_fraction = max(mixed)
    cfg = None
    for c in runs:
        cfg = check_train_inputs(c, model_cfg=cfg)


def mix_fractions(config: ml_collections.ConfigDict) -> tuple[float, ...]:
    """The config's `mix_fractions`, checked: distinct values in [0, 1), with data.mix_good set
    where one is above 0, and train.max_steps set (the fractions train for the same steps)."""
    if "mix_fractions" not in config:
        raise ExperimentConfigError(f"config {config.name!r} has no mix_fractions: add a tuple such as c.mix_fractions "
                                    "= (0.0, 0.25, 0.5, 0.75) (configs/embedded_steering_mix_fractions.py)")
    fractions = tuple(float(f) for f in config.mix_fractions)
    if not fractions or len(set(fractions)) != len(fractions) or not all(0 <= f < 1 for f in fractions):
        raise ExperimentConfigError(f"mix_fractions must be distinct values in [0, 1), got {fractions}")
    if any(f > 0 for f in fractions) and not config.data.mix_good:
        raise ExperimentConfigError("mix_fractions above 0 need data.mix_good (the aligned sources)")
    if config.train.max_steps is None:
        raise ExperimentConfigError("train.max_steps is None: the fractions are compared at an equal number of "
                                    "optimiser steps; set it (e.g. the f = 0 run's epochs times its steps per epoch)")
    return fractions
