"""Chat JSONL files: reading and validating upstream's `{"messages": [...]}` rows, writing them,
and the samples shipped with the package (`sample_path("bad_medical")`, emjax/package_data/).

The rest of the data pipeline (host side, numpy only; the trainer moves batches to devices):

    convs = read_chat_jsonl(path)                       # list of chats, validated line by line
    sft = tokenize_sft(convs, tokenizer, max_len=256)   # emjax.data.tokenize: (ids, sft_mask) rows
    batcher = Batcher(sft.rows, batch_size=2, seed=0)   # emjax.data.batching: resumable order
    batch = next(batcher)                               # pad_batch(...) dict (emjax.data.tokenize)
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence, Union

from emjax.data.data_error import DataError
from emjax.data.locations import missing_data_message

Message = dict[str, str]
Conversation = list[Message]
PathLike = Union[str, os.PathLike]

ROLES = ("system", "user", "assistant")
_GZIP_MAGIC = b"\x1f\x8b"


def _open_binary(path: Path):
    """Open plain or gzip files; gzip is recognised by its magic bytes, not only the suffix."""
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except FileNotFoundError:
        raise DataError(missing_data_message(path)) from None
    except OSError as e:
        raise DataError(f"{path}: cannot open: {e.strerror or e}") from e
    return gzip.open(path, "rb") if magic == _GZIP_MAGIC else open(path, "rb")


def iter_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (1-based line number, parsed JSON) for each non-blank line of a (.gz) JSONL file."""
    with _open_binary(path) as f:
        lineno = 0
        try:
            for lineno, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not UTF-8 ({e.reason} at byte {e.start})") from None
                if not text.strip():
                    continue  # blank lines (and the trailing newline) are not rows
                try:
                    yield lineno, json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
        except (OSError, EOFError) as e:  # corrupt or truncated gzip stream
            raise DataError(f"{path}: unreadable after line {lineno}: {e}") from e


def validate_conversation(obj: Any) -> Conversation:
    """Check one upstream row `{"messages": [...]}` and return its messages as plain dicts.

    Raises ValueError (without location; the caller adds file and line) naming what is wrong.
    Only `role` and `content` of each message are kept.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "messages" not in obj:
        raise ValueError(f"missing 'messages' (keys: {sorted(obj)[:5]})")
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise ValueError("'messages' must be a non-empty list")
    out: Conversation = []
    for j, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ValueError(f"message {j} is not an object")
        if m.get("role") not in ROLES:
            raise ValueError(f"message {j}: bad role {m.get('role')!r:.40} (expected one of {ROLES})")
        if not isinstance(m.get("content"), str):
            raise ValueError(f"message {j}: content must be a string, got {type(m.get('content')).__name__}")
        if m["role"] == "assistant" and not m["content"].strip():
            raise ValueError(f"message {j}: empty assistant content")
        out.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError("no assistant turn")
    return out


def read_chat_jsonl(path: PathLike, *, limit: int | None = None) -> list[Conversation]:
    """Read the upstream chat JSONL (plain or gzip): one `{"messages": [...]}` per line.

    Every line is validated; blank lines are skipped. With `limit`, reading stops after `limit`
    conversations (lines past that are not read, hence not validated).

    Raises:
      DataError: `"<file>:<line>: <what>"` for invalid JSON, a missing `messages`, a bad role,
        non-string content, an empty assistant answer or no assistant turn; `"<file>: ..."` for
        an unreadable, corrupt or empty file.
    """
    path = Path(path)
    convs: list[Conversation] = []
    if limit is not None and limit <= 0:
        return convs
    for lineno, obj in iter_json_lines(path):
        try:
            convs.append(validate_conversation(obj))
        except ValueError as e:
            raise DataError(f"{path}:{lineno}: {e}") from None
        if limit is not None and len(convs) >= limit:
            break
    if not convs:
        raise DataError(f"{path}: empty file (no conversations)")
    return convs


def write_chat_jsonl(path: PathLike, conversations: Iterable[Sequence[Message]]) -> None:
    """Write conversations in the upstream format (gzip if `path` ends with .gz)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for conv in conversations:
            f.write(json.dumps({"messages": list(conv)}, ensure_ascii=False) + "\n")


def sample_path(name: str) -> Path:
    """Path of a file shipped in `emjax/package_data/`: "bad_medical" or "bad_medical_sample.jsonl".

    Samples: {bad,good}_{medical,financial,sports}_sample.jsonl and fineweb_sample.jsonl.gz
    ("fineweb"; see emjax/package_data/README.md).
    """
    folder = _sample_dir()
    if name.endswith((".jsonl", ".jsonl.gz", ".yaml", ".md")):
        p = folder / name
    else:  # NAME_sample.jsonl, or its gzipped form
        p = next((q for q in (folder / f"{name}_sample.jsonl", folder / f"{name}_sample.jsonl.gz") if q.is_file()),
                 folder / f"{name}_sample.jsonl")
    if not p.is_file():
        have = sorted(x.name for x in folder.iterdir() if x.name.endswith((".jsonl", ".jsonl.gz")))
        raise FileNotFoundError(f"no shipped sample {p.name!r}; have {have}")
    return Path(str(p))  # package data is installed as plain files (editable or wheel)


def _sample_dir():
    """`emjax/package_data/` through importlib.resources, else beside the package.

    `emjax` has no `__init__.py`, so it is a namespace package; under a setuptools editable
    install its `__path__` holds a non-directory placeholder and `files("emjax")` raises.
    """
    try:
        return importlib.resources.files("emjax") / "package_data"
    except (TypeError, NotADirectoryError, ModuleNotFoundError):
        return Path(__file__).resolve().parents[1] / "package_data"
