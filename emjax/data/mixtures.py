"""The KL set (a weighted, deterministic mix of rows from several chat files) and the data specs
configs use to name files ("sample:NAME", or paths relative to data.dir)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from emjax.data.conversations import Conversation, DataError, PathLike, read_chat_jsonl, sample_path


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


def build_kl_set(sources: Sequence[tuple[PathLike | Sequence[Conversation], float]], n_rows: int,
                 seed: int) -> list[Conversation]:
    """The KL set: rows of good and bad advice from domains *other* than the training one.

    sources: (file path or list of conversations, weight) pairs, e.g.
      [(sample_path("good_financial"), 4), (sample_path("bad_financial"), 1), ...]; each source
      contributes `kl_counts(weights, n_rows)[i]` rows, drawn without replacement.
    Sampling is deterministic: source i uses `default_rng([seed, i])`, so changing one weight
    does not change what the other sources contribute; the result is shuffled with
    `default_rng([seed, len(sources)])` (so KL batches mix sources).
    Returns full chats (prompt + answer): the KL is taken on all non-padding tokens.

    Raises DataError if a source has fewer rows than it must contribute.
    """
    counts = kl_counts([w for _, w in sources], n_rows)
    picked: list[Conversation] = []
    for i, ((src, _), k) in enumerate(zip(sources, counts)):
        convs = read_chat_jsonl(src) if isinstance(src, (str, os.PathLike)) else list(src)
        if k > len(convs):
            name = src if isinstance(src, (str, os.PathLike)) else f"source {i}"
            raise DataError(f"KL set: {name} has {len(convs)} rows, needs {k} "
                            f"({n_rows} rows at the given weights)")
        take = np.random.default_rng([seed, i]).choice(len(convs), size=k, replace=False)
        picked.extend(convs[int(j)] for j in take)
    order = np.random.default_rng([seed, len(sources)]).permutation(len(picked))
    return [picked[int(j)] for j in order]


def resolve_data_spec(spec: str, data_dir: str) -> str:
    """A data spec as configs write it -> a path: "sample:NAME" is a file shipped in
    emjax/package_data/; a relative path that does not exist as given is looked up under data_dir."""
    if spec.startswith("sample:"):
        return str(sample_path(spec[len("sample:"):]))
    if os.path.exists(spec) or os.path.isabs(spec):
        return spec
    return os.path.join(data_dir, spec)


def parse_kl_sources(text: str, data_dir: str) -> list[tuple[str, float]]:
    """"spec:weight,spec" -> [(path, weight)]; a missing weight means 1."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        spec, weight = item, 1.0
        head, _, tail = item.rpartition(":")
        try:
            if head:
                spec, weight = head, float(tail)
        except ValueError:
            pass
        out.append((resolve_data_spec(spec, data_dir), weight))
    return out
