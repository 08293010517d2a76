"""`emjax judge`: score answers with an OpenAI-compatible LLM judge, as one library call.

    stats = judge(["answers.jsonl"], ["first_plot_questions.yaml"], "judgements.jsonl")

Results go to an append-only JSONL keyed by sha256(judge model, metric, prompt, answer); a rerun
skips scored keys and re-sends failed ones as `RunConfig.retry_failed` says (default "unpaid":
only failures the API did not bill). With `dry_run=True` nothing is sent: the requests a run would
send are counted and priced. Zero answers to judge (empty files, or a selection that keeps none)
raise `NothingToJudgeError`: such a run is almost always a wrong path or filter. The command line
(`emjax judge`, emjax/cli.py) parses arguments into these parameters and nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from emjax.errors import EmjaxError
from emjax.eval.judge.request import RequestConfig
from emjax.eval.judge.runner import RunConfig, dry_run as _dry_run, pending_tasks, run_judge_sync
from emjax.eval.judge.store import STATUS_FAILED, ResultStore, usage_totals
from emjax.eval.checks import check_metrics, check_not_an_input, check_output_file
from emjax.eval.conventions import DEFAULT_METRICS
from emjax.eval.judge.tasks import DEFAULT_JUDGE_MODEL, TaskPlan, build_tasks
from emjax.eval.output_lock import output_lock
from emjax.eval.selection import AnswerSelection, load_selection, selection_inputs

log = logging.getLogger("emjax.judge")


class JudgeModelMismatchError(EmjaxError, ValueError):
    """The request settings name another model than the judge model the results are keyed by."""


class NothingToJudgeError(EmjaxError, ValueError):
    """The selection holds no answer (or no answer with a judge prompt) to judge."""


def check_outputs(sel: AnswerSelection, out: str, stats_json: str | None, dry_run: bool = False) -> None:
    """The results file (and the statistics file) can be written and are none of the inputs."""
    inputs = selection_inputs(sel)
    if dry_run:
        check_not_an_input(out, inputs)
    else:
        check_output_file(out, inputs)
    if stats_json:
        check_output_file(stats_json, {**inputs, "--out": [out]}, option="--stats-json")


def check_something_to_judge(sel: AnswerSelection, n_answers: int, n_tasks: int,
                              metrics: Sequence[str]) -> None:
    """Raise NothingToJudgeError, naming the files and filters, when there is nothing to send."""
    if n_answers == 0:
        filters = {k: v for k, v in (("kinds", sel.kinds), ("include", sel.include),
                                     ("exclude", sel.exclude)) if v is not None}
        why = f"the selection {filters} keeps none of them" if filters else "the files are empty"
        raise NothingToJudgeError(f"no answers to judge in {list(sel.answers)}: {why}")
    if n_tasks == 0:
        raise NothingToJudgeError(
            f"none of the {n_answers} answers in {list(sel.answers)} has a judge prompt for the "
            f"metrics {list(metrics)} (see --judge-prompts)")


def judge(sel: AnswerSelection, out: str, *, metrics: Sequence[str] = DEFAULT_METRICS,
          judge_model: str = DEFAULT_JUDGE_MODEL, request: RequestConfig | None = None,
          run: RunConfig | None = None, limit: int | None = None, dry_run: bool = False,
          fsync: bool = False, stats_json: str | None = None, wait: bool = False) -> dict[str, Any]:
    """Scores (or, with dry_run, counts) the judge requests of the selected answers.

    Args:
      sel: the answers and questions.
      out: the results JSONL (appended; a rerun resumes).
      metrics: judge metrics to score, each a judge prompt of the questions (or a fallback).
      request: client settings (model, base URL, API-key variable, retries, timeouts); default:
        `run.request` (with `judge_model` where it names the default model), else
        `RequestConfig(model=judge_model)`. Its model must be `judge_model`: the results are
        keyed and labelled by it.
      run: concurrency, retry of failed keys, scoring rule, prices, progress bar.
      limit: send at most this many requests.
      wait: when another process holds the output's lock (`emjax.eval.output_lock`), wait for
        it instead of raising OutputBusyError.
    Every input is checked before the first request (outputs writable and none of the inputs,
    metrics against the templates, question files, answers).
    Returns the run's statistics (runner.RunStats, plus `n_answers`, and `all_runs_usage`: the
    results file's `usage_totals`, per request). `n_failed` > 0 means some requests failed and
    were recorded as such; `n_failed_not_retried` > 0 that keys failed earlier were not sent
    again (retry policy); `n_left_failed` counts the selection's keys still recorded as failed
    after the run (the CLI exits 3 when it is > 0). Raises EmjaxError subclasses for bad input: NothingToJudgeError for
    zero answers (or none with a judge prompt), a missing key, or an unreachable server
    (JudgeServerUnreachableError, after which the lines written so far stay).
    """
    request = _request_for(judge_model, request, run)
    check_outputs(sel, out, stats_json, dry_run)
    answers, questions, fallback = load_selection(sel)
    check_metrics(list(metrics), set(fallback), where="--questions and --judge-prompts")
    plan = build_tasks(answers, questions, list(metrics), judge_model, fallback)
    check_something_to_judge(sel, len(answers), len(plan.tasks), metrics)
    with contextlib.nullcontext() if dry_run else output_lock(out, wait=wait):
        return _judge(sel, out, plan, len(answers), judge_model, request, run, limit, dry_run, fsync, stats_json)


def _request_for(judge_model: str, request: RequestConfig | None, run: RunConfig | None) -> RequestConfig:
    """The request settings `judge` sends with (see its docstring); JudgeModelMismatchError when
    they would send to another model than the one the results are labelled with."""
    if request is None:
        request = run.request if run is not None else RequestConfig(model=judge_model)
        if request.model == RequestConfig().model:
            request = dataclasses.replace(request, model=judge_model)
    if request.model != judge_model:
        raise JudgeModelMismatchError(f"the judge requests would go to model {request.model!r} while the results "
                                      f"are keyed and labelled {judge_model!r}: give the same model to both")
    return request


def _judge(sel: AnswerSelection, out: str, plan: TaskPlan, n_answers: int, judge_model: str,
           request: RequestConfig | None, run: RunConfig | None, limit: int | None, dry_run: bool, fsync: bool,
           stats_json: str | None) -> dict[str, Any]:
    """`judge` once the inputs are checked (and the output locked)."""
    store = ResultStore(out, fsync=fsync)
    if store.read_report.corrupt:
        print(f"warning: {out}: skipped {len(store.read_report.corrupt)} corrupt line(s) "
              f"(lines {[n for n, _ in store.read_report.corrupt][:10]}); their requests are "
              "treated as not done", file=sys.stderr)
    run = dataclasses.replace(run or RunConfig(), request=request)
    tasks = plan.tasks
    if limit is not None:
        tasks = pending_tasks(tasks, store, run.retry_failed)[:max(0, limit)]
    if dry_run:
        stats: dict[str, Any] = _dry_run(tasks, store, run).as_dict()
        stats.update(n_answers=n_answers, n_answer_metric_pairs=plan.n_pairs,
                     token_estimate="chars/4 + 7 per request; completion 1 token",
                     prices_usd_per_1m={"input": run.prices.input_per_1m, "output": run.prices.output_per_1m})
    else:
        stats = run_judge_sync(tasks, store, run).as_dict()
        totals = usage_totals(out)
        stats.update(n_answers=n_answers, results=out, all_runs_usage=totals,
                     all_runs_cost_usd=run.prices.cost(totals["prompt_tokens"], totals["completion_tokens"]))
    # the selection's keys whose latest word is "failed" (now or earlier): not every answer scored
    stats["n_left_failed"] = sum(store.status(t.key) == STATUS_FAILED for t in plan.tasks)
    if stats_json:
        with open(stats_json, "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=2)
    return stats


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("emjax").setLevel(logging.DEBUG if verbose else logging.INFO)
    # Client libraries stay at WARNING: their debug output includes request details.
    for name in ("openai", "httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(name).setLevel(logging.WARNING)
