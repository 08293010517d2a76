"""The judge run: skip what the store already holds, send the rest with bounded concurrency.

Every pending task ends as exactly one new store line, "ok" (with a score, possibly None for
CODE/REFUSAL-type answers) or "failed" (with a reason and whether it was paid). Records are
written as each request finishes, so cancelling or killing the run loses only requests in
flight; the next run skips every key already scored and therefore never pays for it twice.
Failed keys are re-sent according to `RunConfig.retry_failed` (store.RETRY_POLICIES).

An unreachable server (connection refused, DNS failure) ends the run early with
`JudgeServerUnreachableError` naming the base URL: a free preflight request (GET /models, no
retries) before the first judge request, and during the run once `abort_after_connection_errors`
requests in a row have failed with connection errors. Lines already written stay.

Concurrency is a fixed pool of `concurrency` worker coroutines pulling from one iterator: at most
that many requests are in flight and memory does not grow with the number of tasks.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as _dt
import logging
import typing
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from emjax.errors import EmjaxError
from emjax.eval.judge.cost import DEFAULT_PRICES, Prices, estimate_prompt_tokens
from emjax.eval.judge.request import (RequestConfig, fetch_judgement, make_client,
                                      read_api_key)
from emjax.eval.judge.scoring import MIN_NUMERIC_MASS, ParseMode, score_0_100, scoring_rule
from emjax.eval.judge.store import (STATUS_FAILED, STATUS_OK, ResultStore, RetryPolicy,
                                    retry_policy)
from emjax.eval.judge.tasks import JudgeTask
from emjax.eval.rescue import write_failure

log = logging.getLogger(__name__)


class JudgeServerUnreachableError(EmjaxError, ConnectionError):
    """The judge server cannot be reached (connection refused, DNS failure); names the URL."""


class JudgeRepliesUnusableError(EmjaxError, RuntimeError):
    """The judge server answers (and bills) without the logprobs a score needs; names the URL."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Knobs of a judge run (the request-level ones live in `request`).

    Attributes:
      retry_failed: which keys recorded as failed a run sends again (store.RETRY_POLICIES):
        "unpaid" (default): those whose failures were never paid (connection errors, timeouts,
        5xx, 429 or other 4xx after the client's retries); "all": also those the API answered
        without usable logprobs, paying again; "none": no failed key. False means "none".
      preflight: before the first judge request, check that the server answers at all
        (GET /models without retries, not billed); connection refused / DNS failure aborts.
      abort_after_connection_errors: abort the run when this many requests in a row (in
        completion order) end in connection errors after the client's retries; 0 never aborts.
      abort_after_unusable_replies: abort the run when this many tasks in a row end failed on
        answers the server was paid for but gave no usable logprobs (a model or server that
        does not return them: each task pays 1 + malformed_retries times); 0 never aborts.
        Ours: 8, as for connection errors.
    """

    request: RequestConfig = dataclasses.field(default_factory=RequestConfig)
    concurrency: int = 32
    retry_failed: RetryPolicy = "unpaid"
    min_mass: float = MIN_NUMERIC_MASS
    score_mode: ParseMode = "strict"
    prices: Prices = DEFAULT_PRICES
    progress: bool = True
    preflight: bool = True
    abort_after_connection_errors: int = 8
    abort_after_unusable_replies: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "retry_failed", retry_policy(self.retry_failed))
        if self.score_mode not in typing.get_args(ParseMode):
            raise ValueError(f"score_mode must be one of {typing.get_args(ParseMode)}, got {self.score_mode!r}")
        if not 0.0 <= self.min_mass <= 1.0:  # NaN fails too
            raise ValueError(f"min_mass must be in [0, 1], got {self.min_mass!r}")


@dataclasses.dataclass
class RunStats:
    """What a run did, counted per request. `n_tasks` unique keys, `n_pending` of them sent,
    `n_cached` not sent (scored before, or recorded failed and left alone by the retry policy:
    those are also in `n_failed_not_retried`). Token counts and `cost_usd` are the API's usage of
    this run's billed (2xx) responses, `n_requests` of them, a 200 without logprobs included;
    `n_requests_without_usage` of those gave no usage (token counts are then a lower bound).
    `n_http_requests` counts HTTP requests sent, the client's retries included (None when the
    client does not count them). `n_failed_paid` of the `n_failed` lines were paid; those keys
    are not re-sent by a plain rerun. `n_failed_not_retried`: keys recorded failed by earlier
    runs that this run did not send (retry policy), so they are still without a score.
    `n_cached_other_scoring`: scored keys not sent again whose line records another scoring rule
    (min_mass, score mode) than this run's: the file then holds scores of both rules.
    """

    n_tasks: int = 0
    n_cached: int = 0
    n_pending: int = 0
    n_ok: int = 0
    n_failed: int = 0
    n_failed_paid: int = 0
    n_failed_not_retried: int = 0
    n_cached_other_scoring: int = 0
    n_score_none: int = 0
    n_requests: int = 0
    n_requests_without_usage: int = 0
    n_http_requests: int | None = 0
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
    n_failed_not_retried: int
    est_prompt_tokens: int
    est_completion_tokens: int
    est_cost_usd: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def pending_tasks(tasks: Iterable[JudgeTask], store: ResultStore,
                  retry_failed: RetryPolicy | bool = "unpaid") -> list[JudgeTask]:
    """Unique tasks a run sends: no record yet, or failed records that `retry_failed` (a retry
    policy, see RunConfig) says to send again."""
    policy = retry_policy(retry_failed)
    out, seen = [], set()
    for t in tasks:
        if t.key in seen:
            continue
        seen.add(t.key)
        if store.should_send(t.key, policy):
            out.append(t)
    return out


def _n_failed_not_sent(unique: Iterable[JudgeTask], pending: Sequence[JudgeTask],
                       store: ResultStore) -> int:
    """Keys recorded failed that the run leaves alone (so they stay without a score)."""
    sent = {t.key for t in pending}
    return sum(store.status(t.key) == STATUS_FAILED and t.key not in sent for t in unique)


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
        n_failed_to_retry=n_failed,
        n_failed_not_retried=_n_failed_not_sent(unique.values(), pending, store),
        est_prompt_tokens=prompt_tokens,
        est_completion_tokens=completion_tokens,
        est_cost_usd=config.prices.cost(prompt_tokens, completion_tokens))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def make_record(task: JudgeTask, fetched: Any, config: RunConfig) -> dict[str, Any]:
    """The store line for one finished request (scored here, so the raw logprobs stay with it)."""
    rec: dict[str, Any] = {
        "key": task.key, "metric": task.metric, "judge_model": task.judge_model,
        "question_id": task.question_id, "attempts": fetched.attempts,
        "http_requests": fetched.http_requests, "paid": fetched.paid,
        "paid_responses": fetched.paid_responses,
        "responses_without_usage": fetched.responses_without_usage,
        "usage": fetched.usage, "request_id": uuid.uuid4().hex, "time": _now(),
    }
    if fetched.ok:
        score, mass = score_0_100(fetched.top_logprobs, config.min_mass, config.score_mode)
        rec.update(status=STATUS_OK, score=score, numeric_mass=mass, reason=None,
                   content=fetched.content, top_logprobs=fetched.top_logprobs,
                   scoring=scoring_rule(config.min_mass, config.score_mode))
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
    Raises JudgeServerUnreachableError (naming the base URL) when the server cannot be reached;
    the lines written until then stay in the store.
    """
    unique = {t.key: t for t in tasks}
    pending = pending_tasks(unique.values(), store, config.retry_failed)
    stats = RunStats(n_tasks=len(unique), n_cached=len(unique) - len(pending),
                     n_pending=len(pending),
                     n_failed_not_retried=_n_failed_not_sent(unique.values(), pending, store),
                     n_cached_other_scoring=n_other_scoring(unique.values(), pending, store,
                                                            scoring_rule(config.min_mass, config.score_mode)))
    if pending:
        own_client = client is None
        if own_client:
            client = make_client(config.request)
        try:
            if config.preflight:
                await preflight(client, config.request)
            await _run_workers(pending, store, config, client, stats, on_record)
        finally:
            if own_client:
                await client.close()
    _warn_failures(stats, config.retry_failed)
    return stats


PREFLIGHT_TIMEOUT_S = 10.0


def base_url_of(client: Any, request: RequestConfig) -> str:
    """The URL requests go to, for messages (the client's own, else the configured one)."""
    url = getattr(client, "base_url", None) or request.base_url
    return str(url) if url else "(the openai default)"


async def preflight(client: Any, request: RequestConfig) -> None:
    """Fail fast when nothing answers at the base URL: one GET /models, no retries, not billed.

    Any HTTP answer (200, 401, 404, 501...) means a server is there. A timeout only warns: the
    server may be slow rather than absent, and the run's own timeouts and retries handle that.
    """
    import openai

    if not hasattr(client, "with_options"):
        return  # an injected client without the openai interface: nothing to probe with
    probe = client.with_options(max_retries=0, timeout=min(request.timeout, PREFLIGHT_TIMEOUT_S))
    try:
        await probe.models.list()
    except openai.APITimeoutError:
        log.warning("judge server %s did not answer a preflight request within %.0f s",
                    base_url_of(client, request), min(request.timeout, PREFLIGHT_TIMEOUT_S))
    except openai.APIConnectionError as e:
        raise JudgeServerUnreachableError(
            f"judge server {base_url_of(client, request)} is unreachable: {e.message}"
            f"{_cause(e)}; no judge request was sent (check --base-url / OPENAI_BASE_URL and "
            "the network)") from None
    except openai.APIError:
        pass  # the server answered (e.g. 401 or 404 on /models): it is reachable
    except Exception as e:  # noqa: BLE001 - a 200 the client cannot read as a model list (an HTML page)
        log.warning("judge server %s answered the preflight request with something other than a model list "
                    "(%s: %.200s); going on", base_url_of(client, request), type(e).__name__, e)


def _cause(err: BaseException) -> str:
    cause = err.__cause__
    return f" ({type(cause).__name__}: {cause})" if cause is not None else ""


async def _run_workers(pending: Sequence[JudgeTask], store: ResultStore, config: RunConfig,
                       client: Any, stats: RunStats,
                       on_record: Callable[[dict[str, Any]], None] | None) -> None:
    """A fixed pool of workers sends `pending`; each finished request is appended at once."""
    try:
        secret: str | None = read_api_key(config.request.api_key_env)
    except Exception:  # noqa: BLE001 - an injected client may not use the env key
        secret = None

    from tqdm.auto import tqdm

    bar = tqdm(total=len(pending), unit="req", desc="judge", disable=not config.progress,
               dynamic_ncols=True)
    queue = iter(pending)
    breaker = _ConnectionBreaker(config.abort_after_connection_errors,
                                 base_url_of(client, config.request), store.path)
    unusable = _UnusableBreaker(config.abort_after_unusable_replies, base_url_of(client, config.request), store.path)

    unwritten: list[dict[str, Any]] = []  # paid results the output refused (see emjax.eval.rescue)
    write_error: list[OSError] = []

    async def worker() -> None:
        for task in queue:  # one shared iterator: each task goes to exactly one worker
            if write_error:
                return  # the output cannot be written: send nothing more
            fetched = await fetch_judgement(client, task.prompt, config.request, secret=secret)
            rec = make_record(task, fetched, config)
            if write_error:
                unwritten.append(rec)  # in flight when the writes failed: kept, not written
            else:
                try:
                    store.append(rec)
                except OSError as e:
                    write_error.append(e)
                    unwritten.append(rec)
            _account(stats, rec, config.prices)
            bar.update(1)
            bar.set_postfix(ok=stats.n_ok, failed=stats.n_failed,
                            cost=f"${stats.cost_usd:.4f}", refresh=False)
            if on_record is not None:
                on_record(rec)
            breaker.record(rec, stats)
            unusable.record(rec, stats)

    workers = [asyncio.ensure_future(worker())
               for _ in range(max(1, min(config.concurrency, len(pending))))]
    try:
        await asyncio.gather(*workers)
    finally:
        for w in workers:  # on cancellation, an abort or a bug in one worker, stop the others
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        bar.close()
        if write_error:  # before any other error: the paid results must be saved first
            raise write_failure(store.path, write_error[0], unwritten, "paid judge result")


class _ConnectionBreaker:
    """Counts requests in a row (completion order) that ended in connection errors; raises
    JudgeServerUnreachableError at `limit` (0: never), so a server that went away mid-run does
    not cost minutes of client retries per remaining request."""

    def __init__(self, limit: int, base_url: str, path: str) -> None:
        self.limit, self.base_url, self.path = limit, base_url, path
        self.in_a_row = 0

    def counts(self, rec: dict[str, Any]) -> bool:
        return rec["status"] != STATUS_OK and _reason_class(rec.get("reason")) == "connection_error"

    def error(self, rec: dict[str, Any], stats: RunStats) -> EmjaxError:
        return JudgeServerUnreachableError(
            f"judge server {self.base_url} is unreachable: {self.in_a_row} requests in a row "
            f"failed with connection errors (last: {rec['reason']}); aborted. The "
            f"{stats.n_ok + stats.n_failed} result line(s) of this run stay in {self.path}; "
            "rerun when the server is reachable (failed requests are sent again)")

    def record(self, rec: dict[str, Any], stats: RunStats) -> None:
        self.in_a_row = self.in_a_row + 1 if self.counts(rec) else 0
        if self.limit and self.in_a_row >= self.limit:
            raise self.error(rec, stats)


class _UnusableBreaker(_ConnectionBreaker):
    """The same count for tasks that ended failed on paid answers without usable logprobs; raises
    JudgeRepliesUnusableError, so a server that never returns them does not bill every remaining
    task 1 + malformed_retries times."""

    def counts(self, rec: dict[str, Any]) -> bool:
        return (rec["status"] != STATUS_OK and bool(rec.get("paid"))
                and _reason_class(rec.get("reason")) in ("missing_logprobs", "malformed_response"))

    def error(self, rec: dict[str, Any], stats: RunStats) -> EmjaxError:
        return JudgeRepliesUnusableError(
            f"judge server {self.base_url} answered {self.in_a_row} tasks in a row without usable logprobs "
            f"(last: {rec['reason']}), each paid; aborted. Check that the model and server return "
            "logprobs with top_logprobs 20 (a local server may need a flag for it). The "
            f"{stats.n_ok + stats.n_failed} result line(s) of this run stay in {self.path}; the paid failures "
            "are sent again only with --retry-failed")


def n_other_scoring(tasks: Iterable[JudgeTask], pending: Sequence[JudgeTask], store: ResultStore,
                    rule: dict[str, Any]) -> int:
    """Scored keys of `tasks` not in `pending` whose line records a scoring rule other than `rule`
    (`scoring.scoring_rule`; lines of older versions record none: not counted)."""
    sent = {t.key for t in pending}
    recs = (store.get(t.key) for t in tasks if t.key not in sent)
    return sum(1 for r in recs if r is not None and r.get("status") == STATUS_OK
               and r.get("scoring") is not None and r["scoring"] != rule)


def other_scoring_warning(n: int) -> str:
    return (f"{n} score(s) already in the results were computed under another min_mass / score mode than "
            "this run's (each line's `scoring` says which): the file holds scores of both rules; judge into "
            "a new --out to score every answer under one")


def _warn_failures(stats: RunStats, policy: RetryPolicy) -> None:
    """Say what is left without a score and what a rerun will do about it."""
    if stats.n_failed:
        log.warning("%d judge request(s) failed: %s", stats.n_failed, dict(stats.failure_reasons))
    if stats.n_failed - stats.n_failed_paid:
        log.warning("%d failed request(s) were not paid; a rerun sends them again",
                    stats.n_failed - stats.n_failed_paid)
    if stats.n_failed_paid:
        log.warning("%d failed request(s) were paid (the API answered without usable "
                    "logprobs); a plain rerun does not send them again: use retry_failed='all' "
                    "(emjax judge --retry-failed) to pay for them again", stats.n_failed_paid)
    if stats.n_cached_other_scoring:
        log.warning("%s", other_scoring_warning(stats.n_cached_other_scoring))
    if stats.n_failed_not_retried:
        log.warning("%d key(s) recorded as failed by earlier runs were not sent (retry policy "
                    "%r) and are still without a score", stats.n_failed_not_retried, policy)


def _account(stats: RunStats, rec: dict[str, Any], prices: Prices) -> None:
    """Add one result line to the run's statistics: per request, the paid ones' usage."""
    if rec["status"] == STATUS_OK:
        stats.n_ok += 1
        stats.n_score_none += rec["score"] is None
    else:
        stats.n_failed += 1
        stats.n_failed_paid += bool(rec["paid"])
        stats.failure_reasons[_reason_class(rec["reason"])] += 1
    stats.n_requests += rec["paid_responses"]
    stats.n_requests_without_usage += rec["responses_without_usage"]
    if rec["http_requests"] is None or stats.n_http_requests is None:
        stats.n_http_requests = None
    else:
        stats.n_http_requests += rec["http_requests"]
    usage = rec.get("usage") or {}
    p, c = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    stats.prompt_tokens += p
    stats.completion_tokens += c
    stats.cost_usd += prices.cost(p, c)


def run_judge_sync(tasks: Sequence[JudgeTask], store: ResultStore,
                   config: RunConfig = RunConfig(), **kwargs: Any) -> RunStats:
    """`run_judge` in a fresh event loop (for scripts and the CLI)."""
    return asyncio.run(run_judge(tasks, store, config, **kwargs))
