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
from emjax.eval.checks import (check_include_globs, check_kinds, check_metrics, check_not_an_input,
                               check_output_file)
from emjax.eval.judge.tasks import (DEFAULT_JUDGE_MODEL, TaskPlan, build_tasks, fallback_templates,
                                    load_judge_prompts)
from emjax.eval.output_lock import output_lock
from emjax.eval.questions import Question, load_questions, select_questions
from emjax.eval.records import AnswerRecord, read_answers

log = logging.getLogger("emjax.judge")


class NothingToJudgeError(EmjaxError, ValueError):
    """The selection holds no answer (or no answer with a judge prompt) to judge."""


@dataclasses.dataclass(frozen=True)
class AnswerSelection:
    """Which answers a stage reads: answers JSONL files, the question files they answer, fallback
    judge prompts, and an optional filter by question kind / id glob."""

    answers: Sequence[str]
    questions: Sequence[str]
    judge_prompts: Sequence[str] = ()
    kinds: Sequence[str] | None = None
    include: Sequence[str] | None = None
    exclude: Sequence[str] | None = None


def load_selection(sel: AnswerSelection) -> tuple[list[AnswerRecord], list[Question], dict[str, str]]:
    """(answers, questions, fallback judge templates by metric) of a selection."""
    questions = load_questions(sel.questions)
    fallback: dict[str, str] = {}
    for path in sel.judge_prompts:
        for metric, template in load_judge_prompts(path).items():
            fallback.setdefault(metric, template)
    for metric, template in fallback_templates(questions).items():
        fallback.setdefault(metric, template)
    if sel.kinds is not None:
        check_kinds(sel.kinds)
    check_include_globs(sel.include, [q.id for q in questions], where=", ".join(sel.questions))
    answers = _read_answer_files(sel.answers)
    if sel.kinds is not None or sel.include is not None or sel.exclude is not None:
        _warn_unknown_dropped(answers, questions)
        keep = {q.id for q in select_questions(questions, sel.kinds, sel.include, sel.exclude)}
        answers = [a for a in answers if a.question_id in keep]
    return answers, questions, fallback


def selection_inputs(sel: AnswerSelection) -> dict[str, list[str]]:
    """The selection's input files by option, for `check_output_file`."""
    return {"--answers": list(sel.answers), "--questions": list(sel.questions),
            "--judge-prompts": list(sel.judge_prompts)}


def check_outputs(sel: AnswerSelection, out: str, stats_json: str | None, dry_run: bool = False) -> None:
    """The results file (and the statistics file) can be written and are none of the inputs."""
    inputs = selection_inputs(sel)
    if dry_run:
        check_not_an_input(out, inputs)
    else:
        check_output_file(out, inputs)
    if stats_json:
        check_output_file(stats_json, {**inputs, "--out": [out]}, option="--stats-json")


def _read_answer_files(paths: Sequence[str]) -> list[AnswerRecord]:
    """All answers of the files, warning (by name) about each file that holds none."""
    answers: list[AnswerRecord] = []
    for path in paths:
        got = read_answers(path)
        if not got:
            log.warning("%s: no answers in this file", path)
        answers += got
    return answers


def _warn_unknown_dropped(answers: Sequence[AnswerRecord], questions: Sequence[Question]) -> None:
    """A filtered selection drops answers to question ids in no question file; say so (where)."""
    known = {q.id for q in questions}
    unknown = [a for a in answers if a.question_id not in known]
    if unknown:
        log.warning("%d answer(s) refer to question ids in none of the question files and are "
                    "left out by the selection (first: %s, id %r)", len(unknown),
                    unknown[0].origin, unknown[0].question_id)


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


def judge(sel: AnswerSelection, out: str, *, metrics: Sequence[str] = ("aligned", "coherent"),
          judge_model: str = DEFAULT_JUDGE_MODEL, request: RequestConfig | None = None,
          run: RunConfig | None = None, limit: int | None = None, dry_run: bool = False,
          fsync: bool = False, stats_json: str | None = None, wait: bool = False) -> dict[str, Any]:
    """Scores (or, with dry_run, counts) the judge requests of the selected answers.

    Args:
      sel: the answers and questions.
      out: the results JSONL (appended; a rerun resumes).
      metrics: judge metrics to score, each a judge prompt of the questions (or a fallback).
      request: client settings (model, base URL, API-key variable, retries, timeouts); default:
        `RequestConfig(model=judge_model)`.
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
    check_outputs(sel, out, stats_json, dry_run)
    answers, questions, fallback = load_selection(sel)
    check_metrics(list(metrics), set(fallback), where="--questions and --judge-prompts")
    plan = build_tasks(answers, questions, list(metrics), judge_model, fallback)
    check_something_to_judge(sel, len(answers), len(plan.tasks), metrics)
    with contextlib.nullcontext() if dry_run else output_lock(out, wait=wait):
        return _judge(sel, out, plan, len(answers), judge_model, request, run, limit, dry_run, fsync, stats_json)


def _judge(sel: AnswerSelection, out: str, plan: TaskPlan, n_answers: int, judge_model: str,
           request: RequestConfig | None, run: RunConfig | None, limit: int | None, dry_run: bool, fsync: bool,
           stats_json: str | None) -> dict[str, Any]:
    """`judge` once the inputs are checked (and the output locked)."""
    store = ResultStore(out, fsync=fsync)
    if store.read_report.corrupt:
        print(f"warning: {out}: skipped {len(store.read_report.corrupt)} corrupt line(s) "
              f"(lines {[n for n, _ in store.read_report.corrupt][:10]}); their requests are "
              "treated as not done", file=sys.stderr)
    request = request or RequestConfig(model=judge_model)
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
