"""Append-only JSONL store of judge results, keyed by `tasks.judge_key`.

One line per finished request: {"key", "status": "ok"|"failed", "score", "numeric_mass",
"reason", "metric", "judge_model", "question_id", "top_logprobs": [{"token", "logprob"}],
"content", "usage": {"prompt_tokens", "completion_tokens"}, "attempts", "time", "schema"}.

Resume semantics: a key with any "ok" line is done and never re-sent; a key whose lines are all
"failed" is retried on the next run unless the caller disables it. Lines are flushed one by one,
so a killed run loses only the requests in flight. An undecodable line (a partial write at kill
time) is skipped and reported; the next append terminates it first so it cannot swallow the next
record. The API key never reaches this file: records are built from response fields only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

from emjax.eval.records import JsonlReadReport, append_jsonl, iter_jsonl

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STATUS_OK = "ok"
STATUS_FAILED = "failed"


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
        self.read_report = JsonlReadReport(path=self.path)
        self.n_lines = 0
        self.load()

    def load(self) -> None:
        """(Re)read the file. For each key keep an "ok" record if any exists, else the last."""
        self._records.clear()
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


def usage_totals(path: str | os.PathLike[str]) -> dict[str, int]:
    """Token usage summed over every line of a results file (all runs, failed attempts included
    where the API reported usage)."""
    totals = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
    if not os.path.exists(path):
        return totals
    for _, rec in iter_jsonl(path):
        usage = rec.get("usage") or {}
        totals["prompt_tokens"] += int(usage.get("prompt_tokens", 0) or 0)
        totals["completion_tokens"] += int(usage.get("completion_tokens", 0) or 0)
        totals["requests"] += 1
    return totals
