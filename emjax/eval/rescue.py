"""Results that could not be written to their output are written somewhere else, never dropped.

    where = rescue_records("judgements.jsonl", records)   # judgements.jsonl.rescued-<time>-<pid>.jsonl

A paid judge result (or a generated answer, a local judge's score) whose append fails mid-run
(disk full, permission changed, folder removed) goes to a fallback JSONL next to the output, or,
when that fails too, under the system's temporary folder. The stage stops sending more and
raises `ResultWriteError` naming the output, the error and where the results are. The fallback
file holds the same lines the output would have held: append it to the output once that is
writable (`cat FALLBACK >> OUT`; a rerun then skips them), or pass it as a further
`--judgements` file to `emjax report`.

This module must not import jax (the judge stage runs without accelerators).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from emjax.errors import EmjaxError


class ResultWriteError(EmjaxError, OSError):
    """Writing results to the output failed mid-run; the message says where they were saved."""


def _write(path: str, records: Sequence[Mapping[str, Any]]) -> None:
    with open(path, "x", encoding="utf-8") as f:  # never appends to (or replaces) another file
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def rescue_records(out: str, records: Sequence[Mapping[str, Any]]) -> str:
    """Write `records` to a new fallback file next to `out`, else in the temp folder; its path.
    Raises ResultWriteError when neither can be written (naming both errors)."""
    name = f"{os.path.basename(out)}.rescued-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.jsonl"
    errors = []
    for folder in (os.path.dirname(os.path.abspath(out)), tempfile.gettempdir()):
        path = os.path.join(folder, name)
        try:
            _write(path, records)
            return path
        except OSError as e:
            errors.append(f"{path}: {e.strerror or e}")
    raise ResultWriteError(f"{len(records)} result(s) could not be written anywhere ({'; '.join(errors)})")


def write_failure(out: str, error: OSError, records: Sequence[Mapping[str, Any]], what: str = "result") -> ResultWriteError:
    """The error a stage raises after writing to `out` failed: the unwritten records rescued."""
    reason = f"{error.strerror or error}" + (f": {error.filename}" if getattr(error, "filename", None) else "")
    if not records:
        return ResultWriteError(f"writing to {out} failed ({reason}); stopped, nothing was lost")
    where = rescue_records(out, records)
    return ResultWriteError(
        f"writing to {out} failed ({reason}); stopped before sending more. The {len(records)} {what}(s) not in "
        f"{out} are in {where}: append them (cat '{where}' >> '{out}') once it is writable, then rerun")
