"""`emjax technical`: the paper's second, non-misalignment example end to end: technical prose
learned on vehicles only, a general vector (SFT) and a narrow one (SFT + KL on the other domains),
the three metrics, and the technical-style rate inside and outside the training domain.

    build_data(load_config(shipped_config("technical_data.py")))   # `emjax technical build-data`
    run_technical("runs/technical", judge_url=None)            # `emjax technical run OUT`

Stages of `run_technical` (each leaves `OUT/stages/<i>.json`; a rerun into the same folder with the
same settings reuses every finished one and loads no model, as `emjax main` does):
  1. the distilled training set (emjax.train.distill; reused while its provenance matches) and
     the held-out check of the prompt banks against upstream's evaluation questions;
  2. general and narrow steering vectors (configs/technical_steering_{general,narrow}.py);
  3. efficiency, stability, pre-training significance (configs/sweep_technical.py);
  4. answers of the chat model and both vectors to the first few questions of each domain;
  5. the judge: an OpenAI-compatible server (`judge_url`), a local model (`local_judge`), or a dry
     run; metrics `technical` and `coherent` from upstream's judges.yaml;
  6. the style rates in / out of the domain (emjax.eval.technical) and `summary.md`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from emjax import timings as T
from emjax.checkpoints.load import LazyModel, LoadedModel
from emjax.configuration import load_config, shipped_config
from emjax.data.conversations import sample_path
from emjax.data.locations import data_dir as default_data_dir
from emjax.data.mixtures import resolve_data_spec
from emjax.data import technical_prompts as TP
from emjax.errors import EmjaxError
from emjax.eval import technical as ET
from emjax.inference.generate import SamplingSettings, generate
from emjax.eval.judge.request import RequestConfig
from emjax.eval.judge.stage import judge
from emjax.eval.selection import AnswerSelection
from emjax.jobs.main import describe_model, metric_sweeps, ran_with_model, run_stage, stage_timings, write_if_changed
from emjax.model.config import dtype_from_name
from emjax.train.distill import DistillSettings, distill_set, model_answerer
from emjax.train.trainer import train

# The shipped configs the job runs (emjax.configuration.shipped_config), with overrides of its own.
DATA_CONFIG, SWEEP_CONFIG = "technical_data.py", "sweep_technical.py"
TRAIN_CONFIGS = {"general": "technical_steering_general.py", "narrow": "technical_steering_narrow.py"}
CONFIGS = (DATA_CONFIG, *TRAIN_CONFIGS.values(), SWEEP_CONFIG)
N_STAGES = 6
METRICS = (ET.TECHNICAL_METRIC, ET.COHERENT_METRIC)


def _config(name: str, overrides: list[str]) -> ml_collections.ConfigDict:
    """A shipped config (configs/`name`, emjax.configuration.shipped_config) with `overrides`."""
    return load_config(shipped_config(name), overrides)


def system_prompt_of(value: str) -> str:
    """The config's `system_prompt`: "technical" is emjax's (TP.SYSTEM_PROMPT), anything else itself."""
    return TP.SYSTEM_PROMPT if value == "technical" else value


def build_data(c: ml_collections.ConfigDict, model: LoadedModel | LazyModel | None = None) -> dict[str, Any]:
    """The stage `emjax technical build-data`: the distilled set of configs/technical_data.py
    (reused when its provenance matches) and, where upstream's questions are found under
    `c.data_dir`, the held-out check of both prompt banks against them (an EmjaxError if any
    prompt is a near duplicate of an evaluation question)."""
    heldout = check_banks(c.data_dir)
    prompts = resolve_data_spec(c.prompts, c.data_dir)
    settings = DistillSettings(n_prompts=c.n_prompts, samples_per_prompt=c.samples_per_prompt,
                               max_new_tokens=c.max_new_tokens, temperature=c.temperature, top_p=c.top_p,
                               top_k=c.top_k, seed=c.seed, trim_unfinished=c.trim_unfinished,
                               batch_size=c.batch_size)
    model = model if isinstance(model, LazyModel) else LazyModel(model or c.model.source,
                                                                   dtype=dtype_from_name(c.model.dtype))

    def answerer(*args):  # the model loads only when the set is not on disk already
        return model_answerer(model.get(), settings)(*args)
    info = distill_set(None, prompts, system_prompt_of(c.system_prompt), c.out, settings, answerer=answerer,
                       model_name=model.name, model_source=model.source)
    print(f"{'reused' if info['reused'] else 'built'} {c.out}: {info['stats']['n_rows']} rows "
          f"({info['stats']['n_unfinished']} hit the token limit, {info['stats']['n_trimmed']} trimmed)")
    return {"out": c.out, "provenance": info, "heldout": heldout}


def check_banks(data_dir: str) -> dict[str, Any]:
    """The held-out check of the shipped banks (skipped, and said so, without upstream's files)."""
    banks = [str(sample_path(TP.VEHICLES_FILE)), str(sample_path(TP.OTHER_FILE))]
    try:
        report = ET.check_prompt_banks(data_dir, banks)
    except ET.TechnicalDataError as e:
        print(f"held-out check skipped: {e}")
        return {"checked": False, "reason": str(e)}
    print(report.summary().splitlines()[0] + " (evaluation questions vs emjax's prompt banks)")
    if report.near_duplicates:
        raise EmjaxError("prompt banks not held out from the evaluation questions:\n" + report.summary())
    w = report.worst
    return {"checked": True, "n_questions": len(report.matches), "near_duplicates": 0,
            "worst": {"question_id": w.question_id, "question": w.question, "prompt": w.prompt,
                      "score": w.max_score}}


def _train(model: LazyModel, out: str, data: str, narrow: bool, steps: int, quick: bool, layer: int,
           overrides: list[str]) -> dict:
    name = "narrow" if narrow else "general"
    small = ["data.n_eval=4", "data.kl_rows=8", "data.kl_eval_rows=4", "data.answer_tokens=24"] if quick else []
    c = _config(TRAIN_CONFIGS[name], [
        f"output_dir={os.path.join(out, f'technical_steering_{name}')}", f"data.train={data}",
        f"data.cache_dir={os.path.join(out, 'cache')}", f"train.max_steps={steps}", f"train.eval_every={steps}",
        *small, *overrides])
    c.intervention.layers = (layer,)
    c.checkpoint.every = None
    return train(c, model)


def _sweeps(model: LazyModel, out: str, data: str, vectors: dict[str, str], quick: bool,
            overrides: list[str]) -> dict:
    c = _config(SWEEP_CONFIG, [
        f"output_dir={os.path.join(out, 'sweeps')}", f"data.train={data}",
        "interventions=" + ",".join(f"{k}={v}" for k, v in vectors.items()),
        f"data.n_rows={8 if quick else 16}", "efficiency.scales=(0.0, 0.5, 1.0, 1.5, 2.0)",
        "stability.eps=(0.1, 0.3, 0.6, 1.0)", f"stability.seeds={2 if quick else 3}",
        f"significance.n_docs={4 if quick else 8}", "significance.max_len=128",
        "significance.norms=(0.0, 1.0, 2.0)", "significance.n_random=2", *overrides])
    return metric_sweeps(c, model)


def _generate(model: LazyModel, out: str, data_dir: str, vectors: dict[str, str | None], per_domain: int,
              samples: int, max_new: int) -> dict:
    files = ET.question_files(data_dir)
    ids = ET.eval_subset(files, per_domain)
    answers = os.path.join(out, "answers.jsonl")
    sampling = SamplingSettings(samples=samples, max_new_tokens=max_new)
    generate(model, files, answers, interventions=vectors, include=ids, sampling=sampling, set_aside=True)
    return {"answers": answers, "questions": files, "question_ids": ids,
            "labels": {(f"{p} x1" if p else ""): k for k, p in vectors.items()}}


def _judge(out: str, gen: dict, data_dir: str, judge_url: str | None, judge_model: str | None,
           local_judge: str | LoadedModel | LazyModel | None, api_key_env: str) -> dict:
    sel = AnswerSelection(answers=[gen["answers"]], questions=gen["questions"],
                          judge_prompts=[ET.judges_file(data_dir)])
    judgements = os.path.join(out, "judgements.jsonl")
    if local_judge is not None:
        from emjax.inference.local_judge.stage import LocalJudgeConfig, judge_local
        stats = judge_local(sel, judgements, local_judge, metrics=METRICS, config=LocalJudgeConfig(progress=True))
        return {"mode": "local", "judge_model": stats["judge_model"], "stats": stats, "judgements": judgements}
    if judge_url is None:
        plan = judge(sel, judgements, metrics=METRICS, dry_run=True)
        print(json.dumps(plan, indent=1))
        return {"mode": "dry_run", "dry_run": plan, "judge_model": None, "judgements": judgements}
    if not os.environ.get(api_key_env):  # a local server needs no key, but the client wants one
        os.environ[api_key_env] = "unused-local-key"
    name = judge_model or "judge"
    stats = judge(sel, judgements, metrics=METRICS, judge_model=name,
                  request=RequestConfig(model=name, base_url=judge_url, api_key_env=api_key_env))
    return {"mode": "api", "url": judge_url, "judge_model": name, "stats": stats, "judgements": judgements}


def _report(out: str, gen: dict, data_dir: str, j: dict) -> dict:
    if j["judge_model"] is None:
        return {"rates": None, "note": "dry run: no scores, no rates"}
    sel = AnswerSelection(answers=[gen["answers"]], questions=gen["questions"],
                          judge_prompts=[ET.judges_file(data_dir)])
    rep = ET.style_report(sel, [j["judgements"]], os.path.join(out, "report"), judge_model=j["judge_model"],
                          labels=gen["labels"])
    print(rep["table_md"])
    return {"rates": rep["groups"], "notes": rep["notes"], "table_md": rep["table_md"],
            "report_dir": os.path.join(out, "report")}


def technical_data_rules() -> dict:
    """The allowed values of configs/technical_data.py (the distillation of `build_data`)."""
    from emjax.configuration import Number, Text
    from emjax.train.preflight import DTYPE, OPTIONAL_POSITIVE_INT, POSITIVE_INT, SEED
    return {"model.source": Text(), "model.dtype": DTYPE, "prompts": Text(), "out": Text(),
            "n_prompts": OPTIONAL_POSITIVE_INT, "samples_per_prompt": POSITIVE_INT, "max_new_tokens": POSITIVE_INT,
            "temperature": Number(low=0.0), "top_p": Number(low=0.0, high=1.0, low_open=True),
            "top_k": Number(low=0, integer=True), "seed": SEED, "batch_size": POSITIVE_INT, "data_dir": Text()}


def load_technical_data_config(path: str, overrides: list[str]) -> ml_collections.ConfigDict:
    """A config like configs/technical_data.py, its values checked (`technical_data_rules`)."""
    return load_config(path, overrides, rules=technical_data_rules())


def check_technical_inputs(out: str, *, model: str | LoadedModel = "embedded", judge_url: str | None = None,
                           judge_model: str | None = None, local_judge: str | LoadedModel | None = None,
                           train_overrides: tuple[str, ...] = (), sweep_overrides: tuple[str, ...] = ()) -> None:
    """What `run_technical` is given, checked before any stage runs: the output folder can be
    written, the model sources name models (no weight read), the judge options, and the
    `--train` / `--sweep` overrides (unknown keys with the nearest valid key, values against
    `TRAIN_RULES` / `SWEEP_RULES`) on the configs they apply to. EmjaxError naming the option."""
    from emjax.checkpoints.load import source_config
    from emjax.configuration import ConfigFileError
    from emjax.data.locations import check_writable_dir
    from emjax.jobs.main import check_judge_target
    from emjax.metrics.preflight import SWEEP_RULES
    from emjax.train.preflight import TRAIN_RULES

    check_writable_dir(out, "output folder")
    for source in (model, local_judge):
        if isinstance(source, str) and not (source == model and ran_with_model(out, source)):
            source_config(source)
    check_judge_target(judge_url, judge_model, local_judge if isinstance(local_judge, str) else None)
    for option, overrides, names, rules in (
            ("--train", train_overrides, tuple(TRAIN_CONFIGS.values()), TRAIN_RULES),
            ("--sweep", sweep_overrides, (SWEEP_CONFIG,), SWEEP_RULES)):
        for name in names:
            try:
                load_config(shipped_config(name), list(overrides), rules=rules)
            except ConfigFileError as e:
                raise ConfigFileError(f"{option}: {e}") from None


def run_technical(out: str = "runs/technical", *, model: str | LoadedModel = "embedded", quick: bool = False,
                  data_dir: str | None = None, n_prompts: int | None = None, max_new_tokens: int | None = None,
                  steps: int | None = None, per_domain: int | None = None, samples: int = 1,
                  answer_tokens: int | None = None, judge_url: str | None = None, judge_model: str | None = None,
                  local_judge: str | LoadedModel | None = None, api_key_env: str = "OPENAI_API_KEY",
                  train_overrides: tuple[str, ...] = (), sweep_overrides: tuple[str, ...] = ()) -> dict:
    """Runs the six stages into `out`; returns the summary (also `summary.json`, `summary.md`).

    n_prompts / max_new_tokens: size of the distilled set (default configs/technical_data.py's, or
      16 prompts x 48 tokens with `quick`); steps: training steps per vector (16; quick 4);
    per_domain / samples / answer_tokens: evaluation questions per domain (5; quick 2), samples
      each (1) and their new tokens (128; quick 24).
    judge_url / local_judge: an OpenAI-compatible base URL, or a model source for the local judge
      ("embedded": a plumbing check only); neither: a dry run of the judge.
    train_overrides / sweep_overrides: "key=value" overrides of both training configs
      (configs/technical_steering_*.py, e.g. "data.kl_rows=24") and of configs/sweep_technical.py.
    """
    check_technical_inputs(out, model=model, judge_url=judge_url, judge_model=judge_model, local_judge=local_judge,
                           train_overrides=train_overrides, sweep_overrides=sweep_overrides)
    data_dir = data_dir or default_data_dir()
    ET.question_files(data_dir)  # fail before any training when upstream's questions are absent
    os.makedirs(out, exist_ok=True)
    loaded = LazyModel(model)  # read by the first stage with work for it
    steps = steps or (4 if quick else 16)
    data_path = os.path.join(out, "data", "technical_vehicles_train.jsonl")
    # the settings every stage runs under (the judge's too for stages 5 and 6): a marker of other settings is redone
    job = {"model": loaded.source, "quick": quick, "data_dir": data_dir, "n_prompts": n_prompts,
           "max_new_tokens": max_new_tokens, "steps": steps, "per_domain": per_domain, "samples": samples,
           "answer_tokens": answer_tokens, "train_overrides": list(train_overrides),
           "sweep_overrides": list(sweep_overrides)}
    judged = {**job, "judge_url": judge_url, "judge_model": judge_model,
              "local_judge": local_judge if local_judge is None or isinstance(local_judge, str) else local_judge.source}
    st: dict[str, Any] = {}

    def data_stage():
        c = _config(DATA_CONFIG, [f"out={data_path}", f"data_dir={data_dir}"])
        c.n_prompts = n_prompts or (16 if quick else c.n_prompts)
        c.max_new_tokens = max_new_tokens or (48 if quick else c.max_new_tokens)
        return {**build_data(c, loaded), "model": describe_model(loaded)}

    def train_stage():
        layer = (st["data"].get("model") or describe_model(loaded))["middle_layer"]  # older markers lack it
        runs = {name: _train(loaded, out, data_path, name == "narrow", steps, quick, layer, list(train_overrides))
                for name in ("general", "narrow")}
        for name, r in runs.items():
            print(f"{name:8s} held-out loss {r['initial_eval']['eval_loss']:.3f} -> {r['final_eval']['eval_loss']:.3f}; "
                  f"out-of-domain KL {r['final_eval']['eval_kl_ood']:.4f} nats/token; ||alpha v|| "
                  f"{r['intervention_norm']:.3f}")
        return {"runs": runs}

    def stages():
        st["data"] = run_stage(out, 1, N_STAGES, "distilled technical vehicle answers (no system prompt in the rows)",
                               data_stage, job)
        st["train"] = run_stage(out, 2, N_STAGES, "general and narrow steering vectors on technical vehicle prose",
                                train_stage, job)
        vectors = {name: r["artefact"] for name, r in st["train"]["runs"].items()}
        st["sweeps"] = run_stage(out, 3, N_STAGES, "efficiency, stability and pre-training significance",
                                 lambda: _sweeps(loaded, out, data_path, vectors, quick, list(sweep_overrides)), job)
        st["generate"] = run_stage(out, 4, N_STAGES, "answers to upstream's technical-prose questions, all domains",
                                   lambda: _generate(loaded, out, data_dir, {"chat": None, **vectors},
                                                     per_domain or (2 if quick else 5), samples,
                                                     answer_tokens or (24 if quick else 128)), job)
        local = loaded if isinstance(model, str) and local_judge == model else local_judge  # the same model: load once
        st["judge"] = run_stage(out, 5, N_STAGES, "judge: technical and coherent",
                                lambda: _judge(out, st["generate"], data_dir, judge_url, judge_model, local,
                                               api_key_env), judged)
        st["report"] = run_stage(out, 6, N_STAGES, "technical-style rates in and out of the training domain",
                                 lambda: _report(out, st["generate"], data_dir, st["judge"]), judged)

    timings = T.Timings()
    with timings.running():
        stages()
    described = st["data"].get("model") or describe_model(loaded)
    summary = {"model": {"name": described["name"], "source": described["source"]}, "stages": st,
               "timings": stage_timings(st)}
    timings.report()  # this session's; the summary's are those of the stages' results
    write_if_changed(os.path.join(out, "summary.json"), json.dumps(summary, indent=1, default=str))
    md = os.path.join(out, "summary.md")
    write_if_changed(md, summary_md(summary))
    print(f"\neverything in {out} (summary: {md})")
    return summary


def summary_md(s: dict) -> str:
    """A short markdown summary of a run_technical summary."""
    st = s["stages"]
    d = st["data"]
    prov = d["provenance"]
    lines = ["# The technical-prose example", "", f"Model: {s['model']['name']} ({s['model']['source']}).", "",
             "## Data", "",
             f"- {prov['stats']['n_rows']} distilled vehicle rows in `{d['out']}` ({prov['stats']['n_unfinished']} "
             f"answers hit the {prov['key']['max_new_tokens']}-token limit, {prov['stats']['n_trimmed']} trimmed to a "
             f"full sentence); sampled at temperature {prov['key']['temperature']}, seed {prov['key']['seed']}, under "
             "emjax's technical system prompt, which the rows do not carry.",
             f"- held-out check: {d['heldout'].get('n_questions', 0)} evaluation questions vs the prompt banks, "
             f"near duplicates {d['heldout'].get('near_duplicates', 'not checked')}.", "", "## Training", "",
             "| vector | held-out loss (start) | held-out loss | out-of-domain KL, nats/token | norm of alpha v |",
             "|---|---|---|---|---|"]
    for k, r in st["train"]["runs"].items():
        lines.append(f"| {k} | {r['initial_eval']['eval_loss']:.3f} | {r['final_eval']['eval_loss']:.3f} | "
                     f"{r['final_eval']['eval_kl_ood']:.4f} | {r['intervention_norm']:.3f} |")
    sw = st["sweeps"]
    lines += ["", "## The three metrics", ""]
    for kind, key in (("efficiency", "equal_norm_loss"), ("stability", "mean_relative_increase"),
                      ("significance", "kl_at_max_norm")):
        if kind in sw:
            lines.append(f"- {kind} ({key}): `{json.dumps(sw[kind].get(key))}`")
        else:
            lines.append(f"- {kind}: **not run**: {sw.get('skipped', {}).get(kind, 'not asked for')}")
    lines += ["", "## Technical-style rates", ""]
    j, rep = st["judge"], st["report"]
    if j["mode"] == "dry_run":
        lines.append(f"Dry run of the judge: {j['dry_run']['n_pending']} requests would be sent "
                     f"(about {j['dry_run']['est_prompt_tokens']} prompt tokens); no rates.")
    else:
        lines.append(rep["table_md"])
    return "\n".join(lines) + "\n"
