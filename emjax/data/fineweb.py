"""FineWeb text for the pre-training-significance metric: a local sample file, or streamed from
the Hugging Face hub as upstream does."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from emjax.data.conversations import DataError, PathLike, iter_json_lines


def _read_texts(path: Path, field: str) -> list[str]:
    """`field` of every row of a JSONL(.gz) or parquet file; names file and line on errors."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        table = pq.read_table(path, columns=[field]) if field in pq.read_schema(path).names else None
        if table is None:
            raise DataError(f"{path}: no column {field!r}")
        texts = table.column(field).to_pylist()
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise DataError(f"{path}: row {bad}: {field!r} is not a string")
        return texts
    texts = []
    for lineno, obj in iter_json_lines(path):
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            raise DataError(f"{path}:{lineno}: expected an object with a string {field!r}")
        texts.append(obj[field])
    return texts


def _select_texts(texts: Iterable[str], n_docs: int | None, max_chars: int, min_chars: int) -> list[str]:
    """First n_docs texts longer than min_chars, each cut to its first max_chars characters."""
    out = []
    for t in texts:
        if n_docs is not None and len(out) >= n_docs:
            break
        if len(t) > min_chars:
            out.append(t[:max_chars])
    return out


def load_fineweb_texts(path: PathLike, n_docs: int | None, max_chars: int = 2000, seed: int = 42,
                       shuffle: bool = True, *, field: str = "text", min_chars: int = 100) -> list[str]:
    """Documents from a local FineWeb sample (JSONL, JSONL.gz or parquet with a `text` field).

    Order: `default_rng(seed).permutation(n)` of the file's rows if `shuffle`, else file order.
    Then the first `n_docs` texts longer than `min_chars` (upstream skips texts of <= 100
    characters), each cut to its first `max_chars` characters. The local shuffle is not the
    streaming buffer shuffle upstream uses, so the documents differ from upstream's.

    Raises DataError if fewer than n_docs texts qualify.
    """
    path = Path(path)
    texts = _read_texts(path, field)
    if shuffle:
        texts = [texts[int(i)] for i in np.random.default_rng(seed).permutation(len(texts))]
    out = _select_texts(texts, n_docs, max_chars, min_chars)
    if n_docs is not None and len(out) < n_docs:
        raise DataError(f"{path}: only {len(out)} texts longer than {min_chars} characters, "
                        f"asked for {n_docs}")
    return out


def stream_fineweb(n_docs: int, max_chars: int = 2000, seed: int = 42, shuffle: bool = True, *,
                   name: str = "sample-10BT", buffer_size: int = 1000, min_chars: int = 100) -> list[str]:
    """Documents streamed from the Hugging Face hub, as upstream does (needs network access).

    `load_dataset("HuggingFaceFW/fineweb", name=name, split="train", streaming=True)`, then
    `.shuffle(seed, buffer_size)` (datasets' default buffer 1000, as upstream), then as
    `load_fineweb_texts`. Upstream keeps the >100-character texts among the first n_docs
    streamed; this returns n_docs qualifying texts.
    """
    from datasets import load_dataset
    ds = load_dataset("HuggingFaceFW/fineweb", name=name, split="train", streaming=True)
    if shuffle:
        ds = ds.shuffle(seed=seed, buffer_size=buffer_size)
    return _select_texts((row["text"] for row in ds), n_docs, max_chars, min_chars)
