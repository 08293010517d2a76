"""The judge run: skip what the store already holds, send the rest with bounded concurrency.

Every pending task ends as exactly one new store line, "ok" (with a score, possibly None for
CODE/REFUSAL-type answers) or "failed" (with a reason). Records are written as each request
finishes, so cancelling or killing the run loses only requests in flight; the next run skips
every key already scored and therefore never pays for it twice.

Concurrency is a fixed pool of `concurrency` worker coroutines pulling from one iterator: at most
that many requests are in flight and memory does not grow with the number of tasks.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as _dt
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from emjax.eval.judge.cost import DEFAULT_PRICES, Prices, estimate_prompt_tokens
from emjax.eval.judge.request import (RequestConfig, fetch_judgement, make_client,
                                 read_api_key)
from emjax.eval.judge.scoring import MIN_NUMERIC_MASS, ParseMode, score_0_100
from emjax.eval.judge.store import STATUS_FAILED, STATUS_OK, ResultStore
from emjax.eval.judge.tasks import JudgeTask

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Knobs of a judge run (the request-level ones live in `request`)."""

    request: RequestConfig = dataclasses.field(default_factory=RequestConfig)
    concurrency: int = 32
    retry_failed: bool = True
    min_mass: float = MIN_NUMERIC_MASS
    score_mode: ParseMode = "strict"
    prices: Prices = DEFAULT_PRICES
    progress: bool = True


@dataclasses.dataclass
class RunStats:
    """What a run did. `cost_usd` is from the API's usage counts of this run only."""

    n_tasks: int = 0
    n_cached: int = 0
    n_pending: int = 0
    n_ok: int = 0
    n_failed: int = 0
    n_score_none: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    failure_reasons: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["failure_reasons"] = dict(self.failure_reasons)
        return d


@dataclasses.dataclass
class DryRunStats:
    """Requests a real run would send now, and a rough cost (chars/4 tokens; see cost.py)."""

    n_tasks: int
    n_cached: int
    n_pending: int
    n_failed_to_retry: int
    est_prompt_tokens: int
    est_completion_tokens: int
    est_cost_usd: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def pending_tasks(tasks: Iterable[JudgeTask], store: ResultStore, retry_failed: bool = True
                  ) -> list[JudgeTask]:
    """Tasks not yet scored: no record, or only failed records when `retry_failed`."""
    out, seen = [], set()
    for t in tasks:
        if t.key in seen:
            continue
        seen.add(t.key)
        status = store.status(t.key)
        if status == STATUS_OK or (status == STATUS_FAILED and not retry_failed):
            continue
        out.append(t)
    return out


def dry_run(tasks: Sequence[JudgeTask], store: ResultStore, config: RunConfig = RunConfig()
            ) -> DryRunStats:
    """Count and price the requests a run would send; sends nothing and needs no API key."""
    unique = {t.key: t for t in tasks}
    pending = pending_tasks(unique.values(), store, config.retry_failed)
    n_failed = sum(store.status(t.key) == STATUS_FAILED for t in pending)
    prompt_tokens = sum(estimate_prompt_tokens(t.prompt) for t in pending)
    completion_tokens = len(pending)  # max_tokens=1
    return DryRunStats(
        n_tasks=len(unique), n_cached=len(unique) - len(pending), n_pending=len(pending),
        n_failed_to_retry=n_failed, est_prompt_tokens=prompt_tokens,
        est_completion_tokens=completion_tokens,
        est_cost_usd=config.prices.cost(prompt_tokens, completion_tokens))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def make_record(task: JudgeTask, fetched: Any, config: RunConfig) -> dict[str, Any]:
    """The store line for one finished request (scored here, so the raw logprobs stay with it)."""
    rec: dict[str, Any] = {
        "key": task.key, "metric": task.metric, "judge_model": task.judge_model,
        "question_id": task.question_id, "attempts": fetched.attempts,
        "usage": fetched.usage, "time": _now(),
    }
    if fetched.ok:
        score, mass = score_0_100(fetched.top_logprobs, config.min_mass, config.score_mode)
        rec.update(status=STATUS_OK, score=score, numeric_mass=mass, reason=None,
                   content=fetched.content, top_logprobs=fetched.top_logprobs)
        if score is None:
            rec["reason"] = f"numeric mass {mass:.3f} < {config.min_mass} (non-numeric answer)"
    else:
        rec.update(status=STATUS_FAILED, score=None, numeric_mass=None, reason=fetched.reason,
                   content=None, top_logprobs=None)
    return rec


def _reason_class(reason: str | None) -> str:
    return (reason or "unknown").split(":", 1)[0]


async def run_judge(tasks: Sequence[JudgeTask], store: ResultStore,
                    config: RunConfig = RunConfig(), client: Any | None = None,
                    on_record: Callable[[dict[str, Any]], None] | None = None) -> RunStats:
    """Judge every pending task and append one record per task to `store`.

    Args:
      client: an `openai.AsyncOpenAI`-compatible client; by default one is built from
        `config.request` (key from the environment) and closed at the end.
      on_record: called after each record is durably appended (progress hooks, tests).
    """
    unique = {t.key: t for t in tasks}
    pending = pending_tasks(unique.values(), store, config.retry_failed)
    stats = RunStats(n_tasks=len(unique), n_cached=len(unique) - len(pending),
                     n_pending=len(pending))
    if not pending:
        return stats
    secret = None
    own_client = client is None
    if own_client:
        client = make_client(config.request)
    try:
        secret = read_api_key(config.request.api_key_env)
    except Exception:  # noqa: BLE001 - an injected client may not use the env key
        secret = None

    from tqdm.auto import tqdm

    bar = tqdm(total=len(pending), unit="req", desc="judge", disable=not config.progress,
               dynamic_ncols=True)
    queue = iter(pending)

    async def worker() -> None:
        for task in queue:  # one shared iterator: each task goes to exactly one worker
            fetched = await fetch_judgement(client, task.prompt, config.request, secret=secret)
            rec = make_record(task, fetched, config)
            store.append(rec)
            _account(stats, rec, config.prices)
            bar.update(1)
            bar.set_postfix(ok=stats.n_ok, failed=stats.n_failed,
                            cost=f"${stats.cost_usd:.4f}", refresh=False)
            if on_record is not None:
                on_record(rec)

    workers = [asyncio.ensure_future(worker())
               for _ in range(max(1, min(config.concurrency, len(pending))))]
    try:
        await asyncio.gather(*workers)
    finally:
        for w in workers:  # on cancellation or a bug in one worker, stop the others too
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        bar.close()
        if own_client:
            await client.close()
    if stats.n_failed:
        log.warning("%d judge request(s) failed: %s; rerun to retry them", stats.n_failed,
                    dict(stats.failure_reasons))
    return stats


def _account(stats: RunStats, rec: dict[str, Any], prices: Prices) -> None:
    if rec["status"] == STATUS_OK:
        stats.n_ok += 1
        stats.n_score_none += rec["score"] is None
    else:
        stats.n_failed += 1
        stats.failure_reasons[_reason_class(rec["reason"])] += 1
    usage = rec.get("usage") or {}
    p, c = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    stats.prompt_tokens += p
    stats.completion_tokens += c
    stats.cost_usd += prices.cost(p, c)


def run_judge_sync(tasks: Sequence[JudgeTask], store: ResultStore,
                   config: RunConfig = RunConfig(), **kwargs: Any) -> RunStats:
    """`run_judge` in a fresh event loop (for scripts and the CLI)."""
    return asyncio.run(run_judge(tasks, store, config, **kwargs))
