"""Splitting rows over weighted sources (the KL set's arithmetic; the set itself is composed in
emjax.train.kl_set) and the data specs configs use to name files ("sample:NAME", or paths
relative to data.dir)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from emjax.data.conversations import Conversation, DataError, PathLike, read_chat_jsonl, sample_path
from emjax.data.locations import missing_data_message


def kl_counts(weights: Sequence[float], n_rows: int) -> list[int]:
    """Split n_rows over sources in proportion to weights (largest remainder; sums to n_rows)."""
    w = np.asarray(weights, float)
    if not len(w) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    exact = w / w.sum() * n_rows
    counts = np.floor(exact).astype(int)
    # ties go to the earlier source: stable sort on the negated remainder
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n_rows - counts.sum()]] += 1
    return counts.tolist()


def resolve_data_spec(spec: str, data_dir: str) -> str:
    """A data spec as configs write it -> the path of an existing file: "sample:NAME" is a file
    shipped in emjax/package_data/; a relative path that does not exist as given is looked up under
    data_dir (configs: emjax.data.locations.data_dir()).

    Raises DataError naming the path, and `emjax data get em` where it is an upstream file or lies
    in the data folder, when the file is not there.
    """
    if spec.startswith("sample:"):
        return str(sample_path(spec[len("sample:"):]))
    path = spec if os.path.exists(spec) or os.path.isabs(spec) else os.path.join(data_dir, spec)
    if not os.path.exists(path):
        raise DataError(missing_data_message(path))
    return path
