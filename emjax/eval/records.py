"""Generated answers as JSONL records, and the crash-tolerant JSONL primitives every stage's files use.

Answers produced by the generation stage are `AnswerRecord`s stored as JSONL; `append_jsonl` and
`read_jsonl` are the shared primitives (the judge's result store uses them too).

Crash damage versus bad files: a killed writer can leave only one thing behind, a last line
without its newline. The next append terminates that line; if it is not a complete record it also
marks it with `CUT_LINE_MARK`, so readers can tell crash damage from a bad line anywhere else.
`read_answers` (strict) skips, with a warning naming file and line, only such cut lines (an
unterminated last line, or a line carrying the mark) and raises `RecordFormatError` naming file
and line for any other malformed line. The lenient `iter_jsonl` / `read_jsonl` (used by the
judge's result store, whose lines can always be re-requested) skip and report every bad line.

This module must not import jax: the judge stage runs on machines without accelerators.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from emjax.eval.questions import QuestionFormatError

log = logging.getLogger(__name__)

# Appended by `append_jsonl` to an unterminated, undecodable last line before it starts a new one:
# the line was cut by an interrupted write, not written wrong (see the module docstring).
CUT_LINE_MARK = b"\t<emjax: line cut off by an interrupted write>"


class RecordFormatError(QuestionFormatError):
    """A record file (answers JSONL) with a malformed line; the message names file and line."""


@dataclasses.dataclass
class JsonlReadReport:
    """What `read_jsonl` skipped: (line number, first 80 characters) per undecodable line."""

    path: str
    n_records: int = 0
    corrupt: list[tuple[int, str]] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.corrupt


def _last_line(f: Any, size: int, chunk: int = 1 << 16) -> bytes:
    """The bytes after the last newline of a file of `size` bytes (read backwards in chunks)."""
    end, tail = size, b""
    while end > 0:
        start = max(0, end - chunk)
        f.seek(start)
        tail = f.read(end - start) + tail
        cut = tail.rfind(b"\n")
        if cut >= 0:
            return tail[cut + 1:]
        end = start
    return tail


def _decodes_to_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw.decode("utf-8")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def _terminate_partial_line(f: Any, path: str) -> bool:
    """Terminate a partial last line (a killed writer) so the next record starts on its own line.

    A complete record that only lacks its newline gets the newline; anything else is also marked
    with CUT_LINE_MARK, so strict readers know it is crash damage and skip it.
    `f` is the file opened "a+b" and locked. Returns True if the file was changed.
    """
    size = os.fstat(f.fileno()).st_size
    if size == 0:
        return False
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return False
    complete = _decodes_to_object(_last_line(f, size))
    f.write(b"\n" if complete else CUT_LINE_MARK + b"\n")  # append mode: always at the end
    log.warning("%s: last line was not newline-terminated (interrupted write); %s", path,
                "terminated it" if complete else "marked it as cut off and terminated it")
    return True


def _lock(f: Any) -> Any:
    """Best-effort exclusive lock so concurrent processes never interleave bytes in one file."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        return None
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    return fcntl


def append_jsonl(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]],
                 fsync: bool = False) -> int:
    """Append records, one JSON line each, flushing after every record.

    Under an flock, a partial last line left by a killed writer is first terminated, then each
    record is written with a single `write` and flushed: a kill leaves at most one partial last
    line, and concurrent writers never interleave. `fsync=True` also survives power loss, at a
    per-record cost. NaN/inf are rejected (they are not JSON).

    Returns the number of records written.
    """
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    n = 0
    with open(path, "a+b") as f:
        fcntl = _lock(f)
        try:
            _terminate_partial_line(f, path)
            for rec in records:
                line = json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n"
                f.write(line.encode("utf-8"))
                f.flush()
                if fsync:
                    os.fsync(f.fileno())
                n += 1
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return n


def _is_cut_line(raw: bytes) -> bool:
    """Crash damage: an unterminated line (the last one) or one marked by `append_jsonl`."""
    return not raw.endswith(b"\n") or raw.rstrip(b"\r\n").endswith(CUT_LINE_MARK)


def iter_jsonl(path: str | os.PathLike[str], report: JsonlReadReport | None = None,
               strict: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each decodable line; skipped lines go to `report`.

    Lines that do not decode to a JSON object are logged (file and line) and skipped. With
    `strict`, only crash damage is skipped (an unterminated last line, or a line marked cut by a
    later append); any other such line raises RecordFormatError naming file and line.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                obj = None
            if not isinstance(obj, dict):
                snippet = raw[:80].decode("utf-8", "replace").rstrip("\n")
                if strict and not _is_cut_line(raw):
                    raise RecordFormatError(
                        f"{path}: line {lineno}: not a JSON object: {snippet!r} (only a line cut "
                        "off by an interrupted write is skipped; fix or delete this line)")
                log.warning("%s: line %d is not a JSON object (cut off by an interrupted write?); "
                            "skipped: %r", path, lineno, snippet)
                if report is not None:
                    report.corrupt.append((lineno, snippet))
                continue
            if report is not None:
                report.n_records += 1
            yield lineno, obj


def read_jsonl(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], JsonlReadReport]:
    """Read all decodable records of a JSONL file and a report of the skipped lines."""
    report = JsonlReadReport(path=os.fspath(path))
    records = [obj for _, obj in iter_jsonl(path, report)]
    return records, report


# ---------------------------------------------------------------------------------------------
# Answer records (output of the generation stage, input of the judge and report stages).


@dataclasses.dataclass
class AnswerRecord:
    """One generated answer.

    `question` is the paraphrase text actually asked (the judge sees it); `system` the system
    prompt used (None if none). `intervention` names the adapter / steering vector (and scale)
    that produced the answer; `config_hash` and `seed` tie it to a reproducible run. `meta` is
    free-form (for example norm, eps, checkpoint step). `origin` ("file: line N") is where
    `read_answers` found the record, for error messages; it is never written.
    """

    question_id: str
    paraphrase_index: int
    sample_index: int
    question: str
    answer: str
    system: str | None = None
    model: str = ""
    intervention: str = ""
    config_hash: str = ""
    seed: int | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    origin: str = dataclasses.field(default="", compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d["origin"]  # where it was read from is not part of the record
        return d


_ANSWER_REQUIRED = ("question_id", "paraphrase_index", "sample_index", "question", "answer")
_ANSWER_FIELDS = {f.name for f in dataclasses.fields(AnswerRecord)} - {"origin"}


# known fields: (key, accepted types, what the message says); bool is refused where int is meant
_ANSWER_TYPES = (
    ("question_id", (str,), "a string"), ("paraphrase_index", (int,), "an integer"),
    ("sample_index", (int,), "an integer"), ("question", (str,), "a string"), ("answer", (str,), "a string"),
    ("system", (str, type(None)), "a string or null"), ("model", (str,), "a string"),
    ("intervention", (str,), "a string"), ("config_hash", (str,), "a string"),
    ("seed", (int, type(None)), "an integer or null"), ("meta", (dict, type(None)), "an object or null"))


def _is_a(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and not (isinstance(value, bool) and bool not in types)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def answer_from_json(obj: Mapping[str, Any], where: str = "") -> AnswerRecord:
    """Build an AnswerRecord from a decoded JSON object; unknown keys are moved into `meta`."""
    missing = [k for k in _ANSWER_REQUIRED if k not in obj]
    if missing:
        raise QuestionFormatError(f"{where}: answer record lacks {missing}")
    for key, types, what in _ANSWER_TYPES:
        if key in obj and not _is_a(obj[key], types):
            raise QuestionFormatError(f"{where}: {key!r} must be {what}, got {type(obj[key]).__name__} "
                                      f"{_short(obj[key])}")
        if key in obj and isinstance(obj[key], str):
            try:
                obj[key].encode("utf-8")
            except UnicodeEncodeError as e:
                raise QuestionFormatError(f"{where}: {key!r} holds a lone surrogate {obj[key][e.start]!r} at "
                                          f"character {e.start}, which is not text; fix the escape") from None
    for key in ("paraphrase_index", "sample_index"):
        if obj[key] < 0:
            raise QuestionFormatError(f"{where}: {key!r} must be >= 0, got {obj[key]}")
    known = {k: v for k, v in obj.items() if k in _ANSWER_FIELDS}
    unknown = {k: v for k, v in obj.items() if k not in _ANSWER_FIELDS}
    rec = AnswerRecord(**known)
    if rec.meta is None:
        rec.meta = {}
    if unknown:
        rec.meta = {**unknown, **rec.meta}
    rec.origin = where
    return rec


def append_answers(path: str | os.PathLike[str], records: Iterable[AnswerRecord],
                   fsync: bool = False) -> int:
    """Append answer records to a JSONL file (flushed per record; see `append_jsonl`)."""
    return append_jsonl(path, (r.to_json() for r in records), fsync=fsync)


def read_answers(path: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]
                 ) -> list[AnswerRecord]:
    """Read answer records from one or several JSONL files (strict: see the module docstring).

    A line cut off by an interrupted write is skipped with a warning naming file and line. Raises
    RecordFormatError naming file and line for any other malformed line, and QuestionFormatError
    (file and line) for a record that lacks fields. Each record's `origin` says where it was.
    """
    if isinstance(path, (str, os.PathLike)):
        path = [path]
    out = []
    for p in path:
        p = os.fspath(p)
        for lineno, obj in iter_jsonl(p, strict=True):
            out.append(answer_from_json(obj, where=f"{p}: line {lineno}"))
    return out
