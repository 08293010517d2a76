"""Append-only JSONL store of judge results, keyed by `tasks.judge_key`.

One line per finished request: {"key", "status": "ok"|"failed", "score", "numeric_mass",
"reason", "metric", "judge_model", "question_id", "top_logprobs": [{"token", "logprob"}],
"content", "usage": {"prompt_tokens", "completion_tokens"}, "attempts", "http_requests",
"paid", "paid_responses", "responses_without_usage", "request_id", "time", "schema"}.
`paid_responses` counts the 2xx answers behind the line (each billed by the API; an "ok" line
has at least one, a "failed" line has some when the API answered without usable logprobs) and
`usage` sums their token counts; `paid` is `paid_responses > 0`. `request_id` is unique per
line, so a line copied twice (merged files) is counted once by `usage_totals`.

Resume semantics: a key with any "ok" line is done and never re-sent. A key whose lines are all
"failed" is re-sent according to the caller's policy (`RETRY_POLICIES`): by default only if none
of its failures was paid (connection errors, 5xx and 429 after the client's retries, timeouts),
since a paid failure (no logprobs) would most likely be paid for again. Lines are flushed one by
one, so a killed run loses only the requests in flight. An undecodable line (a partial write at
kill time) is skipped and reported; the next append terminates it first so it cannot swallow the
next record. The API key never reaches this file: records are built from response fields only.

Lines written before schema 2 lack the paid fields; they are inferred exactly from the old
retry rule (every attempt but a final API error was a 2xx response; see `paid_responses`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from emjax.errors import EmjaxError
from emjax.eval.records import JsonlReadReport, append_jsonl, iter_jsonl

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
STATUS_OK = "ok"
STATUS_FAILED = "failed"

# Which failed keys a run re-sends: "unpaid" (default) those none of whose failures was paid,
# "all" every failed key (pays again for paid failures), "none" no failed key.
RETRY_POLICIES = ("unpaid", "all", "none")
RetryPolicy = Literal["unpaid", "all", "none"]
# Failure reasons that, in schema-1 lines, mean the last attempt was a 2xx response too.
_PAID_FAILURE_REASONS = ("malformed_response", "missing_logprobs")


class RetryPolicyError(EmjaxError, ValueError):
    """A retry policy that is not one of RETRY_POLICIES."""


def retry_policy(value: str | bool) -> RetryPolicy:
    """Normalise a retry policy. False (the old `retry_failed=False`) means "none"; True is
    refused: it used to mean "all", the old default, which is no longer the default."""
    if value is False:
        return "none"
    if value is True or value not in RETRY_POLICIES:
        raise RetryPolicyError(
            f"retry_failed={value!r}: choose one of {RETRY_POLICIES} (\"unpaid\": re-send failed "
            "requests that were not paid, the default; \"all\": also those answered without "
            "logprobs, paying again; \"none\": re-send no failed request)")
    return value  # type: ignore[return-value]


def paid_responses(rec: Mapping[str, Any]) -> int:
    """Billed (2xx) responses behind one result line; inferred for schema-1 lines, whose outer
    loop returned at once on an API error, so every attempt but such a final error was a 2xx."""
    if "paid_responses" in rec:
        return int(rec.get("paid_responses") or 0)
    attempts = int(rec.get("attempts") or 1)
    last_paid = (rec.get("status") == STATUS_OK
                 or (rec.get("reason") or "").split(":", 1)[0] in _PAID_FAILURE_REASONS)
    return attempts if last_paid else attempts - 1


class ResultStore:
    """In-memory index over an append-only results JSONL file.

    Attributes:
      path: the JSONL file (created on first append).
      read_report: what loading skipped (corrupt lines with their line numbers).
    """

    def __init__(self, path: str | os.PathLike[str], fsync: bool = False) -> None:
        self.path = os.fspath(path)
        self.fsync = fsync
        self._records: dict[str, dict[str, Any]] = {}
        self._paid_keys: set[str] = set()  # keys with at least one paid line (ok or failed)
        self.read_report = JsonlReadReport(path=self.path)
        self.n_lines = 0
        self.load()

    def load(self) -> None:
        """(Re)read the file. For each key keep an "ok" record if any exists, else the last."""
        self._records.clear()
        self._paid_keys.clear()
        self.read_report = JsonlReadReport(path=self.path)
        self.n_lines = 0
        if not os.path.exists(self.path):
            return
        for lineno, rec in iter_jsonl(self.path, self.read_report):
            key = rec.get("key")
            if not isinstance(key, str):
                self.read_report.corrupt.append((lineno, "record without a 'key'"))
                continue
            self.n_lines += 1
            self._index(rec)
        if self.read_report.corrupt:
            log.warning("%s: skipped %d corrupt line(s) at line(s) %s", self.path,
                        len(self.read_report.corrupt),
                        [n for n, _ in self.read_report.corrupt][:10])

    def _index(self, rec: dict[str, Any]) -> None:
        if paid_responses(rec) > 0:
            self._paid_keys.add(rec["key"])
        old = self._records.get(rec["key"])
        if old is not None and old.get("status") == STATUS_OK and rec.get("status") != STATUS_OK:
            return  # a later failure (e.g. a forced re-run) never hides a paid-for score
        self._records[rec["key"]] = rec

    def merge(self, other: "ResultStore") -> None:
        """Index another store's records too (read-only; nothing is written to this file)."""
        for rec in other:
            self._index(rec)

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record (flushed; fsync if configured) and index it."""
        rec = dict(record)
        rec.setdefault("schema", SCHEMA_VERSION)
        append_jsonl(self.path, [rec], fsync=self.fsync)
        self.n_lines += 1
        self._index(rec)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._records.get(key)

    def status(self, key: str) -> str | None:
        rec = self._records.get(key)
        return None if rec is None else rec.get("status")

    def is_done(self, key: str) -> bool:
        return self.status(key) == STATUS_OK

    def was_paid(self, key: str) -> bool:
        """Some line of this key was billed (an "ok" line, or a failure after a 2xx answer)."""
        return key in self._paid_keys

    def should_send(self, key: str, policy: RetryPolicy = "unpaid") -> bool:
        """Whether a run with this retry policy sends `key`: never when scored, always when
        unseen, and for a failed key as `policy` says (see RETRY_POLICIES)."""
        status = self.status(key)
        if status is None:
            return True
        if status == STATUS_OK:
            return False
        return policy == "all" or (policy == "unpaid" and not self.was_paid(key))

    def score(self, key: str) -> float | None:
        """The score of an "ok" record (None for CODE/REFUSAL-type answers or unknown keys)."""
        rec = self._records.get(key)
        if rec is None or rec.get("status") != STATUS_OK:
            return None
        return rec.get("score")

    def __contains__(self, key: object) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self._records.values())


def usage_totals(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What every run into a results file cost, counted per request, not per line.

    Returns {"requests": billed (2xx) responses, malformed-then-retried ones each counted;
    "prompt_tokens", "completion_tokens": summed over them where the API reported usage;
    "requests_without_usage": billed responses whose body gave no usage (unparseable), so the
    token totals are a lower bound when it is > 0; "http_requests": HTTP requests sent, the
    client's own retries included, or None if some line does not record it (older lines);
    "result_lines": distinct lines}. A line present twice (same `request_id`; for older lines the
    same content) is counted once.
    """
    totals: dict[str, Any] = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                              "requests_without_usage": 0, "http_requests": 0, "result_lines": 0}
    if not os.path.exists(path):
        return totals
    seen: set[str] = set()
    for _, rec in iter_jsonl(path):
        line_id = rec.get("request_id") or json.dumps(rec, sort_keys=True)
        if line_id in seen:
            continue
        seen.add(line_id)
        _add_line_usage(totals, rec)
    return totals


def _add_line_usage(totals: dict[str, Any], rec: Mapping[str, Any]) -> None:
    n_paid = paid_responses(rec)
    usage = rec.get("usage") or {}
    totals["result_lines"] += 1
    totals["requests"] += n_paid
    totals["prompt_tokens"] += int(usage.get("prompt_tokens", 0) or 0)
    totals["completion_tokens"] += int(usage.get("completion_tokens", 0) or 0)
    if "responses_without_usage" in rec:
        totals["requests_without_usage"] += int(rec["responses_without_usage"] or 0)
    else:  # schema 1 kept the usage of the final "ok" response only
        totals["requests_without_usage"] += n_paid - (1 if rec.get("usage") else 0)
    http = rec.get("http_requests")
    if http is None or totals["http_requests"] is None:
        totals["http_requests"] = None
    else:
        totals["http_requests"] += int(http)
