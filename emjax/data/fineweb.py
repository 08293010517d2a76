"""FineWeb text for the pre-training-significance metric: a local sample file, the 64 documents
shipped with emjax ("sample:fineweb"), or streamed from the Hugging Face hub as upstream does."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from emjax.data.conversations import DataError, PathLike, iter_json_lines, sample_path
from emjax.data.locations import fineweb_hint

# FineWeb's provenance columns, kept beside the text where a source has them (`stream_index`: the
# position in the stream of the sample emjax's shipped documents come from).
META_FIELDS = ("id", "url", "dump", "stream_index")


def corpus_path(spec: str | PathLike) -> Path:
    """A corpus as configs name it -> a path: "sample:NAME" is shipped in emjax/package_data/."""
    spec = str(spec)
    return sample_path(spec[len("sample:"):]) if spec.startswith("sample:") else Path(spec)


def read_fineweb_rows(path: PathLike, field: str = "text") -> list[dict]:
    """Rows of a JSONL(.gz) or parquet file: `field` (a string in every row) and the META_FIELDS it
    has. Names file and line on errors; a missing file's error says how to fetch a sample."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found: {fineweb_hint()}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        names = pq.read_schema(path).names
        if field not in names:
            raise DataError(f"{path}: no column {field!r}")
        rows = pq.read_table(path, columns=[field] + [m for m in META_FIELDS if m in names]).to_pylist()
        bad = next((i for i, r in enumerate(rows) if not isinstance(r[field], str)), None)
        if bad is not None:
            raise DataError(f"{path}: row {bad}: {field!r} is not a string")
        return rows
    rows = []
    for lineno, obj in iter_json_lines(path):
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            raise DataError(f"{path}:{lineno}: expected an object with a string {field!r}")
        rows.append({k: obj[k] for k in (field, *META_FIELDS) if k in obj})
    return rows


def take_documents(rows: Iterable[dict], n_docs: int | None, max_chars: int | None, min_chars: int = 100,
                   field: str = "text") -> list[dict]:
    """First n_docs rows whose text is longer than min_chars, the text cut to its first max_chars
    characters (None: whole)."""
    out = []
    for r in rows:
        if n_docs is not None and len(out) >= n_docs:
            break
        if len(r[field]) > min_chars:
            out.append({**r, field: r[field][:max_chars]})
    return out


def select_documents(rows: list[dict], n_docs: int | None, max_chars: int | None = 2000, seed: int = 42,
                     shuffle: bool = True, *, field: str = "text", min_chars: int = 100) -> list[dict]:
    """`default_rng(seed).permutation(len(rows))` of the rows if `shuffle`, else their order; then the
    first n_docs longer than min_chars (upstream skips texts of <= 100 characters), cut to max_chars."""
    if shuffle:
        rows = [rows[int(i)] for i in np.random.default_rng(seed).permutation(len(rows))]
    return take_documents(rows, n_docs, max_chars, min_chars, field)


def load_fineweb_texts(path: str | PathLike, n_docs: int | None, max_chars: int | None = 2000, seed: int = 42,
                       shuffle: bool = True, *, field: str = "text", min_chars: int = 100) -> list[str]:
    """Documents from a local FineWeb sample (JSONL, JSONL.gz or parquet with a `text` field; or
    "sample:fineweb", the documents shipped with emjax).

    Order and selection as `select_documents`. The local shuffle is not the streaming buffer
    shuffle upstream uses, so the documents differ from upstream's.

    Raises DataError if the file is missing (naming `emjax data get fineweb`) or fewer than n_docs
    texts qualify.
    """
    path = corpus_path(path)
    docs = select_documents(read_fineweb_rows(path, field), n_docs, max_chars, seed, shuffle,
                            field=field, min_chars=min_chars)
    if n_docs is not None and len(docs) < n_docs:
        raise DataError(f"{path}: only {len(docs)} texts longer than {min_chars} characters, "
                        f"asked for {n_docs}")
    return [d[field] for d in docs]


def stream_fineweb_rows(seed: int = 42, shuffle: bool = True, *, name: str = "sample-10BT",
                        buffer_size: int = 1000) -> Iterator[dict]:
    """Rows of HuggingFaceFW/fineweb streamed from the hub, as upstream reads them (needs network):
    `load_dataset("HuggingFaceFW/fineweb", name=name, split="train", streaming=True)`, then
    `.shuffle(seed, buffer_size)` (datasets' default buffer 1000, as upstream). Text and META_FIELDS."""
    from datasets import load_dataset
    ds = load_dataset("HuggingFaceFW/fineweb", name=name, split="train", streaming=True)
    if shuffle:
        ds = ds.shuffle(seed=seed, buffer_size=buffer_size)
    for row in ds:
        yield {k: row[k] for k in ("text", *META_FIELDS) if k in row}


def stream_fineweb(n_docs: int, max_chars: int | None = 2000, seed: int = 42, shuffle: bool = True, *,
                   name: str = "sample-10BT", buffer_size: int = 1000, min_chars: int = 100) -> list[str]:
    """Texts streamed as `stream_fineweb_rows` gives them, selected and cut as `load_fineweb_texts`.
    Upstream keeps the >100-character texts among the first n_docs streamed; this returns n_docs
    qualifying texts."""
    rows = stream_fineweb_rows(seed, shuffle, name=name, buffer_size=buffer_size)
    return [r["text"] for r in take_documents(rows, n_docs, max_chars, min_chars)]
