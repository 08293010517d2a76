"""`emjax main`: the paper's pipeline in miniature on the embedded Qwen2.5-Coder-0.5B, on CPU.

Stages (each prints progress; everything lands in the output folder, `summary.md` and
`summary.json` last). A finished stage leaves `stages/<i>.json` with the job settings it ran
under; a rerun into the same folder with the same settings reuses it, so an interrupted job
resumes at the first unfinished stage, and a finished job's rerun loads no model and rewrites
nothing. A stage run again (its settings changed) still reuses what its own checks find
finished: trained runs of the same config, sweep kinds of the same inputs, answers already
sampled, judgements already paid for. Each stage records its `timings` (`emjax.timings`);
the summary's are their sum, and the job prints this session's at the end.
  1. load and verify the embedded model; greedy chat with top-token probabilities;
  2. train a *general* steering vector (SFT only) and a *narrow* one (SFT + KL on other domains)
     on the shipped bad-medical-advice sample, at the middle layer (one replicate per seed);
  3. the three metrics: efficiency (loss vs norm), stability (orthogonal noise) and
     pre-training significance (KL on FineWeb text: the 64 documents shipped with emjax unless
     $EMJAX_FINEWEB or `emjax data get fineweb` gives a larger sample);
  4. answers of the chat model and each vector to general (EM) questions and to held-out medical
     questions (the narrow evaluation);
  5. the judge: with `judge_url` (any OpenAI-compatible server) every answer is scored and the EM
     and narrow rates are reported side by side; without it, a dry run counts the requests.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import numpy as np

from emjax import timings as T
from emjax.checkpoints.load import LazyModel, LoadedModel
from emjax.configuration import load_config, shipped_config
from emjax.data.conversations import sample_path
from emjax.data.fineweb import corpus_path
from emjax.data.locations import fineweb_hint
from emjax.errors import EmjaxError
from emjax.inference.chat import DEFAULT_PROMPTS, chat, format_results
from emjax.eval.conventions import NARROW_METRIC, PAPER_METRICS, Thresholds
from emjax.eval.domains import DOMAINS
from emjax.inference.generate import SamplingSettings, generate
from emjax.interventions.files import load_steering
from emjax.eval.judge.request import RequestConfig
from emjax.eval.judge.stage import judge
from emjax.eval.records import read_answers
from emjax.eval.report import report
from emjax.eval.selection import AnswerSelection
from emjax.metrics.runner import sweep
from emjax.model.schema import num_params
from emjax.train.replicates import replicate_config, spread
from emjax.train.trainer import train

# The main job runs the shipped configs/embedded_steering_*.py and configs/sweep_default.py
# (emjax.configuration.shipped_config) with a few overrides of its own (fewer steps, a smaller sweep).
TRAIN_CONFIGS = {"general": "embedded_steering_general.py", "narrow": "embedded_steering_narrow.py"}
SWEEP_CONFIG = "sweep_default.py"
CONFIGS = (*TRAIN_CONFIGS.values(), SWEEP_CONFIG)
N_STAGES = 5
METRICS = ("efficiency", "stability", "significance")  # the paper's three


@dataclasses.dataclass(frozen=True)
class JobSize:
    """How much the main job does (ours, all of it: sized for 2 CPU cores, the README's times;
    a check of the pipeline, not a replication). `--quick` is a smoke run of every stage."""
    chat_prompts: int             # greedy demo prompts (emjax.inference.chat.DEFAULT_PROMPTS)
    chat_tokens: int
    steps: int                    # optimiser steps per vector (4 rows each: embedded_steering_*.py)
    eval_rows: int                # held-out in-domain rows (data.n_eval) and out-of-domain KL rows
    sweep_rows: int               # training rows of the efficiency and stability sweeps
    scales: tuple[float, ...]     # efficiency: multiples of each trained vector
    eps: tuple[float, ...]        # stability: relative norms of the orthogonal noise
    noise_seeds: int
    fineweb_docs: int             # significance: FineWeb documents, cut to fineweb_tokens
    fineweb_tokens: int
    norms: tuple[float, ...]      # significance: norms, multiples of the largest trained norm
    random_vectors: int
    samples: int                  # answers per question and vector
    answer_tokens: int
    domain_questions: int         # the first of the shipped held-out medical bank
    # rows per sampling call: a CPU decode step reads every weight (2.5 GB in float32) whatever
    # the rows, so one call of all rows beats several small ones
    sample_batch: int = 32


FULL = JobSize(chat_prompts=3, chat_tokens=48, steps=12, eval_rows=8, sweep_rows=12,
               scales=(0.0, 0.5, 1.0, 1.5, 2.0), eps=(0.1, 0.3, 0.6, 1.0), noise_seeds=2, fineweb_docs=6,
               fineweb_tokens=128, norms=(0.0, 1.0, 2.0), random_vectors=2, samples=2, answer_tokens=40,
               domain_questions=6)
QUICK = JobSize(chat_prompts=1, chat_tokens=16, steps=2, eval_rows=4, sweep_rows=4, scales=(0.0, 1.0, 2.0),
                eps=(0.3, 1.0), noise_seeds=1, fineweb_docs=2, fineweb_tokens=64, norms=(0.0, 2.0),
                random_vectors=1, samples=1, answer_tokens=16, domain_questions=3)


def _config(name: str, overrides: list[str]):
    return load_config(shipped_config(name), overrides)


def _stage(out: str, i: int, title: str, fn: Callable[[], dict], key: dict) -> dict:
    return run_stage(out, i, N_STAGES, title, fn, key=key)


def run_stage(out: str, i: int, n_stages: int, title: str, fn: Callable[[], dict], key: dict | None = None) -> dict:
    """Runs stage i of n unless its result is on disk from an earlier run into `out` under the
    same `key` (the settings the stage ran under; `out`/stages/i.json, written whole once the
    stage has finished, with its `timings`; a marker without a key, of an older emjax, is reused)."""
    marker = os.path.join(out, "stages", f"{i}.json")
    print(f"\n=== {i}/{n_stages} {title} ===", flush=True)
    key = json.loads(json.dumps(key)) if key is not None else None  # as the marker holds it (lists)
    if os.path.exists(marker):
        with open(marker) as f:
            done = json.load(f)
        if key is None or done.get("key", key) == key:
            print(f"(done in an earlier run: {marker})")
            return done
        changed = [f"{k}: {done['key'].get(k)!r} -> {v!r}" for k, v in key.items() if done["key"].get(k) != v]
        print(f"(done in an earlier run with other settings: {'; '.join(changed)}; running it again)")
    timings = T.Timings()
    with timings.running():
        result = {"title": title, **fn()}
    result["timings"] = timings.report()
    result["seconds"] = round(result["timings"]["total"], 1)
    if key is not None:
        result["key"] = key
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    with open(marker + ".tmp", "w") as f:
        json.dump(result, f, indent=1, default=str)
    os.replace(marker + ".tmp", marker)
    return result


def _train(model: LazyModel, out: str, narrow: bool, size: JobSize, seed: int, layer: int) -> dict:
    name = "narrow" if narrow else "general"
    c = _config(TRAIN_CONFIGS[name], [
        f"output_dir={os.path.join(out, f'embedded_steering_{name}_medical')}", f"train.max_steps={size.steps}",
        f"train.eval_every={size.steps}", f"data.n_eval={size.eval_rows}", f"data.kl_eval_rows={size.eval_rows}"])
    c.intervention.layers = (layer,)
    c.data.cache_dir = os.path.join(out, "cache")
    c.checkpoint.every = None  # the main job checkpoints only at the end
    return train(replicate_config(c, seed), model)


def _sweeps(model: LazyModel, out: str, vectors: dict[str, str], size: JobSize) -> dict:
    c = _config(SWEEP_CONFIG, [
        "name=main", f"output_dir={os.path.join(out, 'sweeps')}",
        "interventions=" + ",".join(f"{k}={v}" for k, v in vectors.items()),
        f"data.n_rows={size.sweep_rows}",
        "loss_chunk=32",  # bounds the float32 logits of all versions at once (151936-wide vocabulary)
        f"efficiency.scales={size.scales}", f"stability.eps={size.eps}", f"stability.seeds={size.noise_seeds}",
        f"significance.n_docs={size.fineweb_docs}", f"significance.max_len={size.fineweb_tokens}",
        f"significance.norms={size.norms}", f"significance.n_random={size.random_vectors}"])
    return metric_sweeps(c, model)


def metric_sweeps(c, model: LazyModel) -> dict:
    """`emjax.metrics.runner.sweep` of the metrics `sweep_kinds` finds runnable; the others under
    "skipped" with the reason."""
    kinds, skipped = sweep_kinds(c)
    return {**sweep(c, kinds, model), **({"skipped": skipped} if skipped else {})}


def sweep_kinds(c) -> tuple[list[str], dict[str, str]]:
    """The metrics a sweep config can run here, and {metric: why not} for the others: significance
    needs its FineWeb corpus (by default the documents shipped with emjax, so it is skipped only
    where a configured file is missing)."""
    if c.significance.stream or corpus_path(c.significance.corpus).is_file():
        return list(METRICS), {}
    why = f"no FineWeb sample at {c.significance.corpus}: {fineweb_hint()}"
    print(f"significance skipped: {why}")
    return ["efficiency", "stability"], {"significance": why}


def _question_files() -> tuple[str, str]:
    return str(sample_path("questions_sample.yaml")), str(DOMAINS["medical"].bank_path())


def _generate(model: LazyModel, out: str, vectors: dict[str, str | None], size: JobSize) -> dict:
    em_q, domain_q = _question_files()
    answers = os.path.join(out, "answers.jsonl")
    sampling = SamplingSettings(samples=size.samples, max_new_tokens=size.answer_tokens,
                                batch_size=size.sample_batch)
    from emjax.eval.questions import load_questions
    domain_ids = [q.id for q in load_questions(domain_q)][:size.domain_questions]
    # every vector's rows in one sampler call per question file (each row under its own vector)
    # a stage run again (other settings, retrained vectors) sets the earlier answers aside
    generate(model, em_q, answers, interventions=vectors, sampling=sampling, set_aside=True)
    generate(model, domain_q, answers, interventions=vectors, sampling=sampling, include=domain_ids, set_aside=True)
    recs = read_answers(answers)
    for r in recs[:: max(1, len(recs) // 6)]:
        print(f"[{r.intervention or 'chat model'}] {r.question}\n    -> {r.answer.strip()[:160]!r}")
    return {"answers": answers, "n_answers": len(recs), "em_questions": em_q, "domain_questions": domain_q,
            "domain_question_ids": domain_ids}


def _judge(out: str, gen: dict, judge_url: str | None, judge_model: str | None, api_key_env: str) -> dict:
    sel = AnswerSelection(answers=[gen["answers"]], questions=[gen["em_questions"], gen["domain_questions"]])
    judgements = os.path.join(out, "judgements.jsonl")
    metrics = PAPER_METRICS
    if judge_url is None:
        plan = judge(sel, judgements, metrics=metrics, dry_run=True)
        print(json.dumps(plan, indent=2))
        return {"dry_run": plan, "judge": None}
    if not os.environ.get(api_key_env):  # a local server needs no key, but the client wants one
        os.environ[api_key_env] = "unused-local-key"
    model = judge_model or "judge"
    stats = judge(sel, judgements, metrics=metrics, judge_model=model,
                  request=RequestConfig(model=model, base_url=judge_url, api_key_env=api_key_env))
    rep = report(AnswerSelection(answers=[gen["answers"]], questions=[gen["em_questions"]]), [judgements],
                 os.path.join(out, "report"), th=Thresholds(), narrow_metric=NARROW_METRIC, judge_model=model,
                 group_by=("intervention",), domain_questions=[gen["domain_questions"]])
    return {"judge": {"url": judge_url, "model": model, "stats": stats}, "rates": rep["rates"],
            "across_seeds": rep["across_seeds"], "thresholds": rep["thresholds"],
            "report_dir": os.path.join(out, "report")}


def check_judge_target(judge_url: str | None, judge_model: str | None, local_judge: str | None = None) -> None:
    """The judge options of a job, checked before anything runs: `judge_url` an http(s) URL,
    `judge_model` only with a judge to send it to, not both a URL and a local judge."""
    from urllib.parse import urlparse

    if judge_url is not None:
        u = urlparse(judge_url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise EmjaxError(f"--judge-url {judge_url!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
        if local_judge is not None:
            raise EmjaxError("--judge-url and --local-judge both given: choose one judge")
    elif judge_model is not None and local_judge is None:
        raise EmjaxError(f"--judge-model {judge_model!r} without --judge-url: nothing would be sent to it (a dry "
                         "run); give --judge-url, or drop --judge-model")


def check_main_inputs(out: str, *, model: str | LoadedModel = "embedded", seeds: tuple[int, ...] = (0,),
                      judge_url: str | None = None, judge_model: str | None = None) -> None:
    """What `run_main` reads and writes, checked before any model loads: the output folder can be
    written, the model source names a model (its folder's config.json and tokenizer files), the
    seeds, and the judge options. EmjaxError naming the option otherwise."""
    from emjax.checkpoints.load import source_config
    from emjax.data.locations import check_writable_dir

    check_writable_dir(out, "--out")
    if not isinstance(model, LoadedModel) and not ran_with_model(out, model):
        source_config(model)
    if not seeds:
        raise EmjaxError("--seeds is empty: give at least one seed, e.g. --seeds 0 or --seeds 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise EmjaxError(f"--seeds {','.join(map(str, seeds))} repeats a seed: give each seed once")
    check_judge_target(judge_url, judge_model)


def ran_with_model(out: str, source: str) -> bool:
    """Whether an earlier run into `out` finished its first stage with this model source (its
    marker's key): the rerun reuses what is on disk and loads the model only for stages left, so
    the source need not be checked (or even exist here) before it starts."""
    try:
        with open(os.path.join(out, "stages", "1.json"), encoding="utf-8") as f:
            return (json.load(f).get("key") or {}).get("model") == source
    except (OSError, ValueError, AttributeError):
        return False


def run_main(out: str = "runs/main", *, model: str | LoadedModel = "embedded", quick: bool = False,
             seeds: tuple[int, ...] = (0,), judge_url: str | None = None, judge_model: str | None = None,
             api_key_env: str = "OPENAI_API_KEY") -> dict:
    """Runs the five stages into `out` and returns the summary (also summary.json, summary.md).

    seeds: one general and one narrow vector per seed (data order); the metrics and rates report
      the spread across seeds when there are several.
    judge_url: an OpenAI-compatible base URL (e.g. a local vLLM server or a test server); None: a
      dry run of the judge. The key is read from `api_key_env` (a placeholder where it is unset).
    """
    check_main_inputs(out, model=model, seeds=seeds, judge_url=judge_url, judge_model=judge_model)
    os.makedirs(out, exist_ok=True)
    timings = T.Timings()
    with timings.running():
        summary = _run_stages(out, LazyModel(model), quick, seeds, judge_url, judge_model, api_key_env)
    summary["timings"] = stage_timings(summary["stages"])
    timings.report()  # this session's; the summary's are those of the stages' results
    path = os.path.join(out, "summary.json")
    write_if_changed(path, json.dumps(summary, indent=1, default=str))
    from emjax.jobs.main_summary import summary_md
    md = os.path.join(out, "summary.md")
    write_if_changed(md, summary_md(summary))
    _print_summary(summary, path, md)
    return summary


def _run_stages(out: str, loaded: LazyModel, quick: bool, seeds: tuple[int, ...], judge_url: str | None,
                judge_model: str | None, api_key_env: str) -> dict:
    """The five stages into `out`; the model is loaded by the first stage that has work for it.

    A stage that fails is listed in summary["not_run"] (with the reason and how to enable it) with
    the stages that need its results, and the job goes on with the others; only a failure of the
    first stage (the model) ends the job, since nothing else can run without it.
    """
    summary: dict[str, Any] = {"stages": {}, "not_run": []}
    job = {"model": loaded.source, "quick": quick, "seeds": list(seeds),
           "size": dataclasses.asdict(QUICK if quick else FULL)}  # a resized job reruns its stages
    rerun = "fix it and rerun the same command (finished stages are reused)"

    def guarded(name: str, i: int, title: str, fn: Callable[[], dict], key: dict) -> dict | None:
        try:
            result = _stage(out, i, title, fn, key)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - the job goes on; the reason is listed, nothing is hidden
            if i == 1:
                raise
            reason = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            print(f"stage {i}/{N_STAGES} ({name}) failed: {reason}", flush=True)
            not_run(name, f"failed: {reason}", rerun)
            return None
        summary["stages"][name] = result
        return result

    def not_run(what: str, reason: str, enable: str) -> None:
        summary["not_run"].append({"what": what, "reason": reason, "enable": enable})

    size = QUICK if quick else FULL

    def chat_stage():
        results = chat(loaded.get(), DEFAULT_PROMPTS[:size.chat_prompts], max_new_tokens=size.chat_tokens)
        print(format_results(results))
        return {"model": describe_model(loaded), "results": [dataclasses.asdict(r) for r in results]}

    guarded("chat", 1, "load the model and chat", chat_stage, job)
    summary["model"] = summary["stages"]["chat"].get("model") or describe_model(loaded)  # older markers lack it
    m = summary["model"]
    print(f"model: {m['name']} ({m['params'] / 1e6:.0f}M parameters) from {m['source']}")

    def train_stage():
        runs = {f"{name}_seed{s}": _train(loaded, out, name == "narrow", size, s, m["middle_layer"])
                for name in ("general", "narrow") for s in seeds}
        for name, r in runs.items():
            print(f"{name:14s} train loss {r['train_loss_first']:.3f} -> {r['train_loss_last']:.3f}; held-out "
                  f"loss {r['initial_eval']['eval_loss']:.3f} -> {r['final_eval']['eval_loss']:.3f}; out-of-domain "
                  f"KL {r['final_eval']['eval_kl_ood']:.4f} nats/token; ||alpha v|| {r['intervention_norm']:.3f}")
        return {"runs": runs}

    trained = guarded("train", 2, "train general and narrow steering vectors on bad medical advice", train_stage, job)
    vectors = {name: r["artefact"] for name, r in trained["runs"].items()} if trained else {}
    if trained:
        sweeps = guarded("sweeps", 3, "efficiency, stability and pre-training significance",
                         lambda: _sweeps(loaded, out, vectors, size), job)
        for kind in METRICS:
            if sweeps is not None and kind not in sweeps:
                not_run(kind, sweeps.get("skipped", {}).get(kind, "not run by the sweep"),
                        "give a FineWeb sample: `emjax data get fineweb` or $EMJAX_FINEWEB" if kind == "significance"
                        else rerun)
    else:
        not_run("sweeps", "needs the trained vectors (stage 2 failed)", rerun)
    gen = guarded("generate", 4, "answers to general and in-domain questions",
                  lambda: _generate(loaded, out, {"chat": None, **vectors}, size), job)
    title = "judge and rates" if judge_url else "judge dry run (no judge URL given)"
    if gen is None:
        not_run("judge", "needs the answers (stage 4 failed)", rerun)
    else:
        judged = guarded("judge", 5, title, lambda: _judge(out, gen, judge_url, judge_model, api_key_env),
                         {**job, "judge_url": judge_url, "judge_model": judge_model})
        if judged is not None and not judged.get("rates"):  # the offline default: said, not a failure
            n = (judged.get("dry_run") or {}).get("n_pending", "n/a")
            summary["judge_note"] = (f"the judge ran as a dry run ({n} requests counted, no rates): "
                                     "`emjax main --judge-url URL [--judge-model NAME]` with any OpenAI-compatible "
                                     "server scores them (finished stages are reused)")
    summary["spread_across_seeds"] = _train_spread(trained["runs"]) if trained and len(seeds) > 1 else None
    summary["general_vs_narrow"] = _vectors_compared(trained["runs"], seeds) if trained else None
    return summary


# ours: below this relative difference the two vectors' metrics differ by rounding only
SAME_VECTOR = 1e-3


def _vectors_compared(runs: dict[str, dict], seeds: tuple[int, ...]) -> dict[str, dict]:
    """Per seed, the narrow vector against the general one: cosine and ||n - g|| / ||g||, with a
    note where they are the same (the KL term has not acted yet: its gradient is zero at the
    zero-initialised vector and second order near it, and short runs stop before it matters)."""
    out = {}
    for s in seeds:
        try:
            g, n = (np.asarray(load_steering(runs[f"{kind}_seed{s}"]["artefact"]).vectors, np.float64).ravel()
                    for kind in ("general", "narrow"))
        except (OSError, KeyError, EmjaxError) as e:  # a moved or deleted vector: the summary goes on
            print(f"general vs narrow (seed{s}): not compared ({e})")
            continue
        scale = max(np.linalg.norm(g), 1e-30)
        rel = float(np.linalg.norm(n - g) / scale)
        cosine = float(g @ n / (scale * max(np.linalg.norm(n), 1e-30)))
        steps = runs[f"narrow_seed{s}"].get("steps")
        note = (f"the narrow and general vectors are the same to {rel:.1e}: the KL term's gradient is zero at "
                f"the zero-initialised vector and second order near it, and {steps} steps are too few for it "
                "to act, so their metrics agree by construction; "
                "a longer run (`emjax main` without --quick) compares them") if rel < SAME_VECTOR else None
        out[f"seed{s}"] = {"cosine": cosine, "relative_difference": rel, "note": note}
    return out


def describe_model(model: LazyModel) -> dict:
    """Name, source, family, layers, middle layer and parameters of a model, without its weights
    where its config is cheap to read (`LazyModel.cfg`)."""
    cfg = model.cfg
    return {"name": model.name, "source": model.source, "family": cfg.family, "layers": cfg.n_layers,
            "middle_layer": cfg.middle_layer, "params": num_params(cfg)}


def stage_timings(stages: dict[str, dict]) -> dict[str, float]:
    """The seconds of the stages' results added up (markers of an older emjax have none)."""
    total: dict[str, float] = {}
    for stage in stages.values():
        total = T.add(total, stage.get("timings") or {})
    return total


def write_if_changed(path: str, text: str) -> None:
    """Writes `path` unless it holds `text` already (a finished job's rerun leaves its files as they are)."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _train_spread(runs: dict[str, dict]) -> dict:
    out = {}
    for kind in ("general", "narrow"):
        rs = [r for k, r in runs.items() if k.startswith(kind + "_")]
        out[kind] = {k: spread([r["final_eval"][k] for r in rs]) for k in ("eval_loss", "eval_kl_ood")}
        out[kind]["intervention_norm"] = spread([r["intervention_norm"] for r in rs])
    return out


def _print_summary(s: dict, path: str, md: str) -> None:
    print("\n=== summary ===")
    st = s["stages"]
    if "train" in st:
        print(f"{'vector':14s} {'held-out loss':>14s} {'OOD KL':>8s} {'||alpha v||':>12s}")
        for k, r in st["train"]["runs"].items():
            print(f"{k:14s} {r['final_eval']['eval_loss']:14.3f} {r['final_eval']['eval_kl_ood']:8.4f} "
                  f"{r['intervention_norm']:12.3f}")
    for seed, c in (s.get("general_vs_narrow") or {}).items():
        print(f"general vs narrow ({seed}): cosine {c['cosine']:.4f}, relative difference {c['relative_difference']:.2e}"
              + (f"; NOTE: {c['note']}" if c.get("note") else ""))
    sw = st.get("sweeps") or {}
    if "efficiency" in sw:
        print("efficiency, loss at each trained norm:", json.dumps(sw["efficiency"]["equal_norm_loss"]))
    if "stability" in sw:
        print("stability, mean relative loss increase:", json.dumps(sw["stability"]["mean_relative_increase"]))
    if "significance" in sw:
        print("significance, KL at the largest norm:", json.dumps(sw["significance"]["kl_at_max_norm"]))
    j = st.get("judge") or {}
    if j.get("rates"):
        print(f"rates ({j['thresholds']['em']}; narrow: {j['thresholds']['narrow']}):")
        for r in j["rates"]:
            print(f"  {r['group'] or 'chat model':60s} EM {_pct(r.get('em_rate'))}  narrow {_pct(r.get('narrow_rate'))}")
    if "generate" in st:
        print(f"answers: {st['generate']['n_answers']} in {st['generate']['answers']}")
    print("seconds per stage: " + ", ".join(f"{k} {v.get('seconds', 'n/a')}" for k, v in st.items())
          + f"; total {s['timings'].get('total', 0):.0f} s")
    for m in s.get("not_run") or []:
        print(f"NOT RUN: {m['what']}: {m['reason']}; to run it: {m['enable']}")
    if s.get("judge_note"):
        print(f"EM and narrow rates: {s['judge_note']}")
    print(f"everything in {os.path.dirname(path)} (summary: {md}; plots: sweeps/*.png, report/*.png)")


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:5.1f}%"
