"""One judge request through `openai.AsyncOpenAI`, with upstream's exact parameters.

Retries are split by who can handle them:

* The openai client's own machinery (`max_retries`, `timeout`) retries 408/409/429/5xx responses,
  timeouts and connection errors with exponential backoff and jitter, and honours `Retry-After` /
  `retry-after-ms` headers (up to 2 minutes). We configure it and do not duplicate it.
* What it lacks: a 200 response whose body is not valid JSON, is not a chat completion, or has
  no first-token `top_logprobs`. Those get a bounded outer retry (`malformed_retries`, short
  exponential backoff); after that the request is recorded as failed with the reason.

Paid or not. The API bills every request it answers with 2xx, usable or not; 429/5xx answers and
connection errors are not billed. So `Fetched` counts the 2xx responses (`paid_responses`) and
sums their `usage` (a 200 without logprobs carries usage too; an unparseable body does not, and
is counted in `responses_without_usage`). A timed-out request may have been answered, and billed,
after we stopped waiting: we cannot know, and count it as unpaid.

Errors left after the client's retries (rate limit, 5xx, timeout, connection) and non-retryable
4xx come back as a failed `Fetched` with a reason string; the runner records them and a later
run retries them. The API key is read from the environment only and scrubbed from any reason.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import math
import os
from typing import Any

from emjax.errors import EmjaxError

from emjax.eval.judge.tasks import DEFAULT_JUDGE_MODEL

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"


class MissingAPIKeyError(EmjaxError, RuntimeError):
    """The environment variable that should hold the API key is unset or empty."""


@dataclasses.dataclass(frozen=True)
class RequestConfig:
    """How to reach the judge and how hard to try.

    Attributes:
      model: judge model id (upstream: gpt-4o-2024-08-06).
      base_url: API base URL (None: the openai default, or OPENAI_BASE_URL).
      api_key_env: name of the environment variable holding the key.
      max_retries: retries of the openai client itself (429/5xx/timeouts/connection errors).
      timeout: per-attempt timeout in seconds.
      malformed_retries: extra attempts for unparseable bodies or missing logprobs.
      malformed_backoff: first wait (s) before such an extra attempt; doubles each time.
      top_logprobs / seed: upstream values (20, 0).
    """

    model: str = DEFAULT_JUDGE_MODEL
    base_url: str | None = None
    api_key_env: str = DEFAULT_API_KEY_ENV
    max_retries: int = 6
    timeout: float = 60.0
    malformed_retries: int = 2
    malformed_backoff: float = 0.5
    top_logprobs: int = 20
    seed: int = 0


def read_api_key(env_name: str = DEFAULT_API_KEY_ENV) -> str:
    """The API key from the environment; the error names the variable, never a value."""
    key = os.environ.get(env_name, "")
    if not key:
        raise MissingAPIKeyError(f"environment variable {env_name} is not set; the judge reads "
                                 "the API key from the environment only")
    return key


# HTTP requests sent by the `fetch_judgement` running in the current asyncio task (the client's
# own retries included); None outside one. A contextvar because many fetches share one client.
_HTTP_SENDS: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "emjax_judge_http_sends", default=None)


async def _count_http_send(request: Any) -> None:
    """httpx request hook: runs once per HTTP request the openai client sends, retries included."""
    sends = _HTTP_SENDS.get()
    if sends is not None:
        sends[0] += 1


def make_client(config: RequestConfig) -> Any:
    """An `openai.AsyncOpenAI` with the key from the environment and the configured retries.

    Its HTTP client counts every request it sends (`Fetched.http_requests`).
    """
    import openai  # local import: dry runs and the report never need it

    http_client = openai.DefaultAsyncHttpxClient(event_hooks={"request": [_count_http_send]})
    return openai.AsyncOpenAI(api_key=read_api_key(config.api_key_env), base_url=config.base_url,
                              max_retries=config.max_retries, timeout=config.timeout,
                              http_client=http_client)


def request_params(prompt: str, config: RequestConfig) -> dict[str, Any]:
    """Chat-completion parameters exactly as upstream: one user message, one token, logprobs."""
    return dict(model=config.model, messages=[{"role": "user", "content": prompt}],
                max_tokens=1, temperature=0, logprobs=True, top_logprobs=config.top_logprobs,
                seed=config.seed)


@dataclasses.dataclass
class Fetched:
    """Outcome of one judge request (after all retries).

    `top_logprobs` is [{"token", "logprob"}, ...] of the first generated token; `reason` says why
    a failed request failed ("rate_limited: ...", "timeout: ...", "missing_logprobs: ...", ...).
    `attempts` counts our sends (each may include the openai client's own retries);
    `http_requests` the HTTP requests actually sent, client retries included (None when the
    client was not made by `make_client`, which counts them). `paid_responses` counts 2xx
    responses, each billed by the API; `usage` sums the usage of those that reported it.
    """

    ok: bool
    top_logprobs: list[dict[str, Any]] | None = None
    content: str | None = None
    usage: dict[str, int] | None = None
    reason: str | None = None
    attempts: int = 0
    paid_responses: int = 0
    responses_without_usage: int = 0
    http_requests: int | None = None

    def __post_init__(self) -> None:
        if self.ok and not self.paid_responses:  # built by hand: a usable answer was a 2xx
            self.paid_responses = 1

    @property
    def paid(self) -> bool:
        """The API answered at least once with 2xx, so this request has cost money."""
        return self.paid_responses > 0

    def add_usage(self, usage: dict[str, int] | None) -> None:
        """Account one paid response's usage (None: the body did not say)."""
        self.paid_responses += 1
        if usage is None:
            self.responses_without_usage += 1
            return
        total = self.usage or {"prompt_tokens": 0, "completion_tokens": 0}
        self.usage = {k: total[k] + usage[k] for k in total}


class _Malformed(Exception):
    """A 2xx response we cannot use; retried by the outer loop."""


def _scrub(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    return text[:500]


def _usage_of(resp: Any) -> dict[str, int] | None:
    """prompt/completion token counts of a parsed response, if it reports them."""
    u = getattr(resp, "usage", None)
    if u is None:
        return None
    try:
        return {"prompt_tokens": int(getattr(u, "prompt_tokens", 0) or 0),
                "completion_tokens": int(getattr(u, "completion_tokens", 0) or 0)}
    except (TypeError, ValueError):
        return None


# A logprob above this is no log-probability (ours: float32 rounding of a certain token gives ~1e-7).
MAX_LOGPROB = 1e-3


def _checked_top(tops: Any) -> list[dict[str, Any]]:
    """[{token, logprob}] of the first token's candidates. A -inf logprob (probability 0, sent by
    some servers for candidates past their sampling filter) is dropped: it weighs nothing in a
    score and JSON cannot store it. NaN, +inf or a positive logprob raise _Malformed: such a reply
    is counted as paid and failed, never stored, so it cannot stop the run."""
    top = []
    for t in tops:
        lp = float(t.logprob)
        if lp == -math.inf:
            continue
        if not (math.isfinite(lp) and lp <= MAX_LOGPROB):
            raise _Malformed(f"malformed_response: logprob {lp!r} of token {str(t.token)!r} is not a log-probability")
        top.append({"token": str(t.token), "logprob": lp})
    if not top:
        raise _Malformed("missing_logprobs: every top_logprobs candidate has probability 0")
    return top


def _extract(resp: Any) -> tuple[list[dict[str, Any]], str | None]:
    """First-token top logprobs and the content of a ChatCompletion, or raise _Malformed."""
    if isinstance(resp, (str, bytes)) or not hasattr(resp, "choices"):
        raise _Malformed(f"malformed_response: not a chat completion ({type(resp).__name__})")
    try:
        choice = resp.choices[0]
        logprobs = choice.logprobs
        content = None if logprobs is None else logprobs.content
        if not content:
            raise _Malformed("missing_logprobs: response has no logprobs content")
        tops = content[0].top_logprobs
        if not tops:
            raise _Malformed("missing_logprobs: first token has no top_logprobs")
        top = _checked_top(tops)
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None)
    except _Malformed:
        raise
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:
        raise _Malformed(f"malformed_response: {type(e).__name__}: {e}") from None
    return top, text


def _parse_paid(raw: Any, fetched: Fetched) -> tuple[list[dict[str, Any]], str | None]:
    """Parse a 2xx raw response, accounting it as paid with its usage; raise _Malformed if
    unusable (usage is still counted when the body reports it)."""
    try:
        resp = raw.parse()
    except Exception as e:  # noqa: BLE001 - any parse failure of a 2xx body is a bad body
        fetched.add_usage(None)
        raise _Malformed(f"malformed_response: {type(e).__name__}: {e}") from None
    fetched.add_usage(_usage_of(resp))
    return _extract(resp)
def _api_error_reason(err: Exception) -> str | None:
    """Reason string for an openai error that the client already retried (or must not retry)."""
    import openai

    if isinstance(err, openai.RateLimitError):
        return f"rate_limited: HTTP 429 after client retries: {err.message}"
    if isinstance(err, openai.APIStatusError):
        kind = "server_error" if err.status_code >= 500 else "http_error"
        return f"{kind}: HTTP {err.status_code}: {err.message}"
    if isinstance(err, openai.APITimeoutError):
        return "timeout: no response within the timeout, after client retries"
    if isinstance(err, openai.APIConnectionError):
        cause = err.__cause__
        detail = f" ({type(cause).__name__})" if cause is not None else ""
        return f"connection_error: {err.message}{detail}"
    if isinstance(err, openai.OpenAIError):
        return f"api_error: {type(err).__name__}: {err}"
    return None


async def fetch_judgement(client: Any, prompt: str, config: RequestConfig,
                          secret: str | None = None) -> Fetched:
    """Send one judge request; never raises for API or body problems (see module docstring).

    `client` is an `openai.AsyncOpenAI` (or one with the same `with_raw_response` interface): the
    raw response tells a paid 2xx with a bad body from an error. `secret` (the API key) is
    scrubbed from reason strings, in case a server echoes it.
    """
    sends = [0]
    token = _HTTP_SENDS.set(sends)
    try:
        fetched = await _fetch(client, request_params(prompt, config), config, secret)
    finally:
        _HTTP_SENDS.reset(token)
    fetched.http_requests = sends[0] if sends[0] else None  # 0: the client does not count
    return fetched


async def _fetch(client: Any, params: dict[str, Any], config: RequestConfig,
                 secret: str | None) -> Fetched:
    """The outer retry loop of `fetch_judgement` (bad 2xx bodies only)."""
    fetched = Fetched(ok=False)
    reason = ""
    for i in range(config.malformed_retries + 1):
        fetched.attempts += 1
        try:
            raw = await client.chat.completions.with_raw_response.create(**params)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - classified below, nothing escapes unrecorded
            if not _is_response_validation_error(e):
                api_reason = _api_error_reason(e) or f"internal_error: {type(e).__name__}: {e}"
                fetched.reason = _scrub(api_reason, secret)
                return fetched
            fetched.add_usage(None)  # a 2xx body the client already refused: paid, retried
            reason = f"malformed_response: {type(e).__name__}: {e}"
        else:
            try:
                fetched.top_logprobs, fetched.content = _parse_paid(raw, fetched)
                fetched.ok = True
                return fetched
            except _Malformed as e:
                reason = str(e)
        if i < config.malformed_retries:
            await asyncio.sleep(config.malformed_backoff * (2 ** i))
    fetched.reason = _scrub(f"{reason} (after {fetched.attempts} attempts)", secret)
    return fetched


def _is_response_validation_error(err: Exception) -> bool:
    """A 2xx response whose body the client itself rejected (strict validation)."""
    import openai

    return isinstance(err, openai.APIResponseValidationError)
