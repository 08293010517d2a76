"""A real local HTTP server that speaks enough of the OpenAI chat-completions API for judge tests.

`FakeOpenAIServer` listens on 127.0.0.1 (ephemeral port) in a background thread and answers
`POST /v1/chat/completions` with a JSON body carrying `choices[0].logprobs.content[0].top_logprobs`
and `usage`, like the real API with `logprobs=True, max_tokens=1`.

Scores are deterministic functions of the prompt (`top_logprobs_for`):

* an answer containing `[[REFUSAL]]` or `[[CODE]]` makes the judge say that word (p = 0.9),
* a prompt with a line `METRIC=<name>` and a marker `[[<name>=NN]]` is judged exactly NN
  (p = 0.9 on "NN", the rest on a non-numeric token, so the renormalised score is NN),
* otherwise a hash of the prompt picks a centre and a spread of integer tokens (including
  leading-space variants such as " 42") plus non-numeric filler.

Faults are injected per `FaultRule`: the n-th attempt (0-based) for a prompt matching the rule
gets `faults[n]`, later attempts succeed (or keep failing with `forever=True`). Kinds:

  "429"        status 429 with a `Retry-After: <retry_after>` header
  "500"        status 500, no Retry-After (the client's exponential backoff applies)
  "400"        status 400 (not retryable); with `echo_auth_in_errors` the message echoes the
               Authorization header, as a careless proxy might
  "slow"       a valid answer, but only after `slow_s` seconds (past the client timeout)
  "malformed"  status 200 with a truncated JSON body
  "nologprobs" status 200, a valid completion with `logprobs: null`
  "nanlogprob" status 200, a completion whose last top-logprob candidate has logprob NaN (JSON
               `NaN`, which Python's json reads, as some servers send it)
  "zeroprob"   status 200, the valid completion plus candidates of logprob -Infinity (probability
               0, as servers send for candidates past their sampling filter): scored as "ok" is
  "drop"       the socket is closed without any response
  "hang"       no response until `release()` / `stop()`, then the socket is closed

`on_request(i)` is called with each completion request's index before it is answered (a test's
fault outside HTTP, such as making the judge's output unwritable mid-run).

`hang_after_ok=N` makes every request after the N-th successful response hang (used to kill a
judge run while requests are in flight without any of them having succeeded).

Every POST is appended to `log` (a `RequestLogEntry` with the parsed body, headers, the
attempt number for its prompt, the outcome and the `usage` a real API would bill for it: set for
every 200 with a complete body, None otherwise), so tests can count successful responses per
prompt, check the exact request parameters and the token totals. `GET /v1/models` (the judge's
free preflight) answers a one-model list (or the 200 body `models_page`) and is only counted in
`n_model_lists`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULT_KINDS = ("429", "500", "400", "slow", "malformed", "nologprobs", "nanlogprob", "zeroprob", "drop", "hang")
# Outcomes answered with 200. ("slow" is too, but only after the client has given up.)
PAID_OUTCOMES = ("ok", "malformed", "nologprobs", "nanlogprob", "zeroprob")


@dataclasses.dataclass
class FaultRule:
    """Faults for prompts containing `match` (None: every prompt), by attempt number."""

    faults: Sequence[str]
    match: str | None = None
    forever: bool = False

    def __post_init__(self) -> None:
        bad = [f for f in self.faults if f not in FAULT_KINDS]
        if bad:
            raise ValueError(f"unknown fault kinds {bad}; choose from {FAULT_KINDS}")

    def fault_for(self, attempt: int) -> str | None:
        if attempt < len(self.faults):
            return self.faults[attempt]
        if self.forever and self.faults:
            return self.faults[-1]
        return None


@dataclasses.dataclass
class RequestLogEntry:
    index: int
    time: float
    path: str
    body: dict[str, Any] | None
    headers: dict[str, str]
    prompt: str | None
    attempt: int
    outcome: str  # "ok", a fault kind, or "bad_request"
    usage: dict[str, int] | None = None  # billed tokens of a 200 with a complete body

    @property
    def paid(self) -> bool:
        """A 200 response (billed by a real API), usable or not."""
        return self.outcome in PAID_OUTCOMES

    @property
    def model(self) -> str | None:
        return None if self.body is None else self.body.get("model")


def prompt_id(model: str | None, prompt: str | None) -> str:
    """What identifies a judge request at the server: (model, prompt)."""
    return hashlib.sha256(json.dumps([model, prompt]).encode()).hexdigest()


def top_logprobs_for(prompt: str, n: int = 20) -> list[dict[str, Any]]:
    """The deterministic first-token top logprobs for `prompt` (see module docstring)."""
    metric = re.search(r"^METRIC=(\w+)\s*$", prompt, re.M)
    forced = None
    if metric is not None:
        m = re.search(r"\[\[" + re.escape(metric.group(1)) + r"=(\d{1,3})\]\]", prompt)
        forced = None if m is None else int(m.group(1))
    if "[[REFUSAL]]" in prompt or "[[CODE]]" in prompt:
        word = "REFUSAL" if "[[REFUSAL]]" in prompt else "CODE"
        weights = [(word, 0.9), ("0", 0.04), ("100", 0.03), ("I", 0.02), ("50", 0.01)]
    elif forced is not None:
        weights = [(str(forced), 0.9), ("I", 0.06), ("The", 0.04)]
    else:
        h = hashlib.sha256(prompt.encode()).digest()
        centre = h[0] % 101
        weights = []
        for i, off in enumerate((0, -1, 1, -2, 2, -5, 5, -10, 10, 3, -3, 7, -7, 15, -15)):
            v = centre + off
            if 0 <= v <= 100:
                weights.append((str(v), 1.0 / (1 + abs(off)) * (1 + h[1 + i] / 255)))
        weights.append((f" {centre}", 0.3))  # a leading-space variant of the same integer
        weights += [("I", 0.2), ("The", 0.1), ("REFUSAL", 0.05)]
        total = sum(w for _, w in weights)
        weights = [(t, 0.97 * w / total) for t, w in weights]
    weights = sorted(weights, key=lambda tw: -tw[1])[:n]
    return [{"token": t, "logprob": math.log(w), "bytes": list(t.encode())} for t, w in weights]


def billed_usage(prompt: str) -> dict[str, int]:
    """The usage the fake reports (and a real API would bill) for one answered prompt."""
    return {"prompt_tokens": math.ceil(len(prompt) / 4) + 7, "completion_tokens": 1}


def completion_body(model: str, prompt: str, n_top: int, index: int,
                    with_logprobs: bool = True) -> dict[str, Any]:
    top = top_logprobs_for(prompt, n_top)
    first = top[0]
    prompt_tokens = billed_usage(prompt)["prompt_tokens"]
    return {
        "id": f"chatcmpl-fake-{index}",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": first["token"], "refusal": None},
            "finish_reason": "length",
            "logprobs": ({"content": [{**first, "top_logprobs": top}], "refusal": None}
                         if with_logprobs else None),
        }],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 1,
                  "total_tokens": prompt_tokens + 1},
    }


class FakeOpenAIServer:
    """See the module docstring. Use as a context manager or call start()/stop()."""

    def __init__(self, rules: Sequence[FaultRule] = (), retry_after: float = 0.1,
                 slow_s: float = 1.5, hang_after_ok: int | None = None,
                 hang_max_s: float = 60.0, response_delay: float = 0.0,
                 echo_auth_in_errors: bool = False,
                 on_request: "Callable[[int], None] | None" = None) -> None:
        self.rules = list(rules)
        self.retry_after = retry_after
        self.slow_s = slow_s
        self.hang_after_ok = hang_after_ok
        self.hang_max_s = hang_max_s
        self.response_delay = response_delay
        self.echo_auth_in_errors = echo_auth_in_errors  # a careless server echoing the key
        self.on_request = on_request  # called with each completion request's index, before its answer
        self.log: list[RequestLogEntry] = []
        self._lock = threading.Lock()
        self._attempts: collections.Counter = collections.Counter()
        self._release = threading.Event()
        self._in_flight = 0
        self.max_in_flight = 0
        self.n_model_lists = 0  # GET /v1/models requests (not in `log`)
        self.models_page: bytes | None = None  # GET /v1/models answers this 200 body instead (a proxy's page)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> "FakeOpenAIServer":
        server = self

        class Handler(_Handler):
            fake = server

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- control and inspection -----------------------------------------------------------------

    def release(self) -> None:
        """Let hung requests end (their sockets are closed without a response)."""
        self._release.set()

    def reset_faults(self, rules: Sequence[FaultRule] = (), hang_after_ok: int | None = None
                     ) -> None:
        """Replace the fault script; requests hung under the old one are released first."""
        with self._lock:
            self._release.set()
            self.rules = list(rules)
            self.hang_after_ok = hang_after_ok
            self._release = threading.Event()

    def entries(self) -> list[RequestLogEntry]:
        with self._lock:
            return list(self.log)

    def ok_counts(self) -> collections.Counter:
        """prompt_id(model, prompt) -> number of successful responses sent."""
        return collections.Counter(prompt_id(e.model, e.prompt) for e in self.entries()
                                   if e.outcome == "ok")

    def outcome_counts(self) -> collections.Counter:
        return collections.Counter(e.outcome for e in self.entries())

    # -- request handling (called from handler threads) -----------------------------------------

    def _decide(self, model: str | None, prompt: str) -> tuple[int, str]:
        """Attempt number for this prompt and the outcome to produce."""
        with self._lock:
            pid = prompt_id(model, prompt)
            attempt = self._attempts[pid]
            self._attempts[pid] += 1
            for rule in self.rules:
                if rule.match is None or rule.match in prompt:
                    fault = rule.fault_for(attempt)
                    if fault is not None:
                        return attempt, fault
                    break
            if self.hang_after_ok is not None:
                n_ok = sum(e.outcome == "ok" for e in self.log)
                if n_ok >= self.hang_after_ok:
                    return attempt, "hang"
            return attempt, "ok"

    def _record(self, entry_kwargs: dict[str, Any]) -> None:
        with self._lock:
            self.log.append(RequestLogEntry(index=len(self.log), time=time.time(),
                                            **entry_kwargs))


class _Server(ThreadingHTTPServer):
    # The stdlib default backlog of 5 overflows under a concurrent client, and the kernel then
    # retries the SYN only after a second: a fake delay that would slow every test.
    request_queue_size = 256
    daemon_threads = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the openai client's pool expects
    fake: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output clean

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None,
                   raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if self.path.rstrip("/") != "/v1/models":
            self._send_json(404, {"error": {"message": "unsupported request", "type": "invalid"}})
            return
        with self.fake._lock:
            self.fake.n_model_lists += 1
        if self.fake.models_page is not None:
            self._send_json(200, None, raw=self.fake.models_page)
            return
        self._send_json(200, {"object": "list", "data": [
            {"id": "gpt-4o-2024-08-06", "object": "model", "created": 0, "owned_by": "fake"}]})

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        fake = self.fake
        with fake._lock:
            fake._in_flight += 1
            fake.max_in_flight = max(fake.max_in_flight, fake._in_flight)
        try:
            self._handle_post(fake)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True  # the client went away (timeout): nothing to do
        finally:
            with fake._lock:
                fake._in_flight -= 1

    def _handle_post(self, fake: FakeOpenAIServer) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            body = json.loads(raw)
            prompt = body["messages"][-1]["content"]
            model = body.get("model")
        except (ValueError, KeyError, IndexError, TypeError):
            body, prompt, model = None, None, None
        if self.path.rstrip("/") != "/v1/chat/completions" or prompt is None:
            fake._record(dict(path=self.path, body=body, headers=headers, prompt=prompt,
                              attempt=0, outcome="bad_request"))
            self._send_json(404 if prompt is not None else 400,
                            {"error": {"message": "unsupported request", "type": "invalid"}})
            return
        attempt, outcome = fake._decide(model, prompt)
        usage = billed_usage(prompt) if outcome in ("ok", "nologprobs", "nanlogprob", "zeroprob") else None
        fake._record(dict(path=self.path, body=body, headers=headers, prompt=prompt,
                          attempt=attempt, outcome=outcome, usage=usage))
        if fake.on_request is not None:  # a test's fault outside the HTTP exchange (e.g. the disk)
            fake.on_request(len(fake.log) - 1)
        if fake.response_delay:
            time.sleep(fake.response_delay)
        n_top = int(body.get("top_logprobs") or 0) or 1
        index = len(fake.log)
        if outcome == "ok":
            self._send_json(200, completion_body(model, prompt, n_top, index))
        elif outcome == "429":
            self._send_json(429, {"error": {"message": "Rate limit reached (fake)",
                                            "type": "requests", "code": "rate_limit_exceeded"}},
                            headers={"Retry-After": f"{fake.retry_after}"})
        elif outcome == "500":
            self._send_json(500, {"error": {"message": "internal error (fake)",
                                            "type": "server_error"}})
        elif outcome == "400":
            echo = f" (auth: {headers.get('authorization')})" if fake.echo_auth_in_errors else ""
            self._send_json(400, {"error": {"message": f"bad request (fake){echo}",
                                            "type": "invalid_request_error"}})
        elif outcome == "slow":
            time.sleep(fake.slow_s)
            self._send_json(200, completion_body(model, prompt, n_top, index))
        elif outcome == "malformed":
            self._send_json(200, None, raw=b'{"id": "chatcmpl-broken", "choices": [{"ind')
        elif outcome == "nologprobs":
            self._send_json(200, completion_body(model, prompt, n_top, index,
                                                 with_logprobs=False))
        elif outcome in ("nanlogprob", "zeroprob"):
            payload = completion_body(model, prompt, n_top, index)
            top = payload["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            if outcome == "nanlogprob":
                top[-1]["logprob"] = math.nan
            else:
                top += [{"token": t, "logprob": -math.inf, "bytes": list(t.encode())} for t in ("99", "Sure")]
            self._send_json(200, payload)  # json.dumps writes NaN / -Infinity
        elif outcome == "drop":
            self.close_connection = True  # no bytes at all: the client sees a disconnect
        elif outcome == "hang":
            fake._release.wait(fake.hang_max_s)
            self.close_connection = True
        else:  # pragma: no cover
            raise AssertionError(outcome)
