"""`emjax judge`: score answers with an OpenAI-compatible LLM judge, as one library call.

    stats = judge(["answers.jsonl"], ["first_plot_questions.yaml"], "judgements.jsonl")

Results go to an append-only JSONL keyed by sha256(judge model, metric, prompt, answer); a rerun
skips scored keys and (unless `retry_failed=False`) retries failed ones. With `dry_run=True`
nothing is sent: the requests a run would send are counted and priced. The command line
(`emjax judge`, emjax/cli.py) parses arguments into these parameters and nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from emjax.eval.judge.request import RequestConfig
from emjax.eval.judge.runner import RunConfig, dry_run as _dry_run, pending_tasks, run_judge_sync
from emjax.eval.judge.store import ResultStore, usage_totals
from emjax.eval.judge.tasks import DEFAULT_JUDGE_MODEL, build_tasks, fallback_templates, load_judge_prompts
from emjax.eval.questions import Question, load_questions, select_questions
from emjax.eval.records import AnswerRecord, read_answers

log = logging.getLogger("emjax.judge")


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
    answers = read_answers(sel.answers)
    if sel.kinds is not None or sel.include is not None or sel.exclude is not None:
        keep = {q.id for q in select_questions(questions, sel.kinds, sel.include, sel.exclude)}
        answers = [a for a in answers if a.question_id in keep]
    return answers, questions, fallback


def judge(sel: AnswerSelection, out: str, *, metrics: Sequence[str] = ("aligned", "coherent"),
          judge_model: str = DEFAULT_JUDGE_MODEL, request: RequestConfig | None = None,
          run: RunConfig | None = None, limit: int | None = None, dry_run: bool = False,
          fsync: bool = False, stats_json: str | None = None) -> dict[str, Any]:
    """Scores (or, with dry_run, counts) the judge requests of the selected answers.

    Args:
      sel: the answers and questions.
      out: the results JSONL (appended; a rerun resumes).
      metrics: judge metrics to score, each a judge prompt of the questions (or a fallback).
      request: client settings (model, base URL, API-key variable, retries, timeouts); default:
        `RequestConfig(model=judge_model)`.
      run: concurrency, retry of failed keys, scoring rule, prices, progress bar.
      limit: send at most this many requests.
    Returns the run's statistics; `n_failed` > 0 means some requests failed and were recorded
    as such (rerun to retry them). Raises EmjaxError subclasses for bad input or a missing key.
    """
    answers, questions, fallback = load_selection(sel)
    plan = build_tasks(answers, questions, list(metrics), judge_model, fallback)
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
        stats.update(n_answers=len(answers), n_answer_metric_pairs=plan.n_pairs,
                     token_estimate="chars/4 + 7 per request; completion 1 token",
                     prices_usd_per_1m={"input": run.prices.input_per_1m, "output": run.prices.output_per_1m})
    else:
        stats = run_judge_sync(tasks, store, run).as_dict()
        totals = usage_totals(out)
        stats.update(n_answers=len(answers), results=out, all_runs_usage=totals,
                     all_runs_cost_usd=run.prices.cost(totals["prompt_tokens"], totals["completion_tokens"]))
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
