"""Cache of what the frozen model computes on fixed data, reused across steps, epochs and runs.

For an intervention whose lowest layer is k, the residual stream entering layer k ("prefix")
never changes during training, and neither do the frozen model's final hidden states on the KL
set (the base side of the KL). Both are computed once per row, kept trimmed to each row's length,
and a batch gathers and pads them. The base *logits* are not cached (a row of 152k-wide float32
logits per token would not fit): the final hidden states are, and the base logits are recomputed
from them by the unembedding alone, a small fraction of a forward pass.

Only the rows a run's steps draw are encoded (the Trainer computes them from the batch order), and
they are kept on disk (`emjax.train.frozen_store`) so that a rerun or a sibling run reuses them.

Encoding keeps the device busy (bench/frozen_cache.py measures it against the bare frozen pass):
rows are sorted by length and padded to a few bucket widths (`bucket_width`), so the pass compiles a
handful of shapes, not one per distinct length (padding each batch to its longest row rounded to 8
compiled dozens); each bucket's batches have a fixed row count (the last one filled up with a
repeated row); the next batches are dispatched before the previous one is copied out (JAX's
asynchronous dispatch; the device-to-host copy starts as each pass ends), and the writes to disk
and their checksums run on a thread.
"""

from __future__ import annotations

import collections
import time
from typing import Callable, Mapping, Sequence

import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from emjax.model.config import ModelConfig
from emjax.model.mesh_plan import fetch, put_rows
from emjax.model.schema import Weights
from emjax.train.frozen_store import FrozenStore, row_hash
from emjax.train.step import frozen_outputs

BATCH_TOKENS = 8192  # padded tokens per encoding batch (ours: 32 rows of 256; never fewer than 8 rows)
IN_FLIGHT = 2        # batches dispatched ahead of the one being copied out (ours: with 2 the build runs at 0.995
                     # of the bare pass on an H200, BENCHMARKS.md)


def cache_bytes(lengths: Sequence[int], cfg: ModelConfig, itemsize: int, with_base: bool) -> int:
    """Host bytes the cache of rows with these lengths takes."""
    return int(sum(lengths)) * cfg.d_model * itemsize * (2 if with_base else 1)


def bucket_width(n: int, cap: int) -> int:
    """Padded width of a row of n tokens: the first of 64, 96, 128, 192, 256, 384, 512, ... (powers of
    two and 1.5 times them) at or above n, at most `cap`. Few widths (five up to 256 tokens), so few
    compiles of the frozen pass, and at most half a row of padding."""
    w = 64
    while w < n:
        w = w * 3 // 2 if w & (w - 1) == 0 else w * 4 // 3
    return min(w, cap)


def plan_batches(lengths: Sequence[int], batch_tokens: int = BATCH_TOKENS) -> list[tuple[int, int, int, int]]:
    """Batches (start, end, width, rows) over rows already sorted by length: rows start..end-1 padded
    to `width`, in a batch of `rows` rows (rows >= end - start: the batch's shape is that of its
    bucket). Rows per batch, one count per width (one compile each): batch_tokens // width (a
    multiple of 8, at least 8), but no more than the bucket's rows rounded up to 8 (a short run's
    few rows are not padded to a batch of hundreds: on a CPU that was 4-8x the work)."""
    lengths = np.asarray(lengths)
    if len(lengths) and np.any(np.diff(lengths) < 0):
        raise ValueError("plan_batches needs rows sorted by length")
    cap = -(-int(lengths.max()) // 8) * 8 if len(lengths) else 8
    out, s = [], 0
    rows_of: dict[int, int] = {}
    while s < len(lengths):
        width = bucket_width(int(lengths[s]), cap)
        if width not in rows_of:  # on entering the bucket: all its rows are still ahead
            in_bucket = int(np.searchsorted(lengths, width, side="right")) - s
            rows_of[width] = min(max(8, batch_tokens // width // 8 * 8), -(-in_bucket // 8) * 8)
        rows = rows_of[width]
        e = s
        while e < len(lengths) and e - s < rows and lengths[e] <= width:
            e += 1
        out.append((s, e, width, rows))
        s = e
    return out


def encode_rows(weights: Weights, cfg: ModelConfig, rows: Sequence[np.ndarray], k: int, with_base: bool, *,
                mesh: Mesh | None = None, batch_tokens: int = BATCH_TOKENS,
                sink: Callable[[int, int, np.ndarray, np.ndarray | None], None] | None = None,
                desc: str = "frozen cache") -> tuple[np.ndarray, np.ndarray | None]:
    """The frozen outputs of `rows` (token ids, sorted by length), back to back: (prefix [sum T_i, D],
    base [sum T_i, D] or None). `sink(s, e, prefix_rows, base_rows)` receives rows s..e-1 as they
    arrive, in order (the disk writer)."""
    lengths = np.array([len(r) for r in rows], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    prefix = base = None
    pending: collections.deque = collections.deque()
    bar = tqdm(total=len(rows), desc=desc, unit="row")

    def copy_out(s, e, out):
        nonlocal prefix, base
        x, xb = fetch(out)
        if prefix is None:  # the activations' dtype is known now
            prefix = np.empty((offsets[-1], cfg.d_model), x.dtype)
            base = np.empty_like(prefix) if with_base else None
        for j, i in enumerate(range(s, e)):
            prefix[offsets[i]: offsets[i + 1]] = x[j, : lengths[i]]
            if with_base:
                base[offsets[i]: offsets[i + 1]] = xb[j, : lengths[i]]
        if sink is not None:
            sink(s, e, prefix[offsets[s]: offsets[e]], base[offsets[s]: offsets[e]] if with_base else None)
        bar.update(e - s)

    try:
        for s, e, width, n in plan_batches(lengths, batch_tokens):
            tokens = np.zeros((n, width), np.int32)
            mask = np.zeros((n, width), bool)
            for j in range(n):  # the rows past e - s repeat the last row: a fixed shape, discarded
                r = rows[min(s + j, e - 1)]
                tokens[j, : len(r)], mask[j, : len(r)] = r, True
            out = frozen_outputs(weights, cfg, *put_rows((tokens, mask), mesh), k, with_base)
            for a in out:
                if a is not None and a.is_fully_addressable:
                    a.copy_to_host_async()  # the copy starts when the pass ends, not when asked
            pending.append((s, e, out))
            if len(pending) > IN_FLIGHT:
                copy_out(*pending.popleft())
        while pending:
            copy_out(*pending.popleft())
    finally:
        bar.close()
    if prefix is None:
        raise ValueError("encode_rows needs at least one row")
    return prefix, base


class FrozenCache:
    """Per-row frozen activations of the rows a run uses: prefix[i] [len_i, D] and, for KL rows,
    base[i] [len_i, D], keyed by row index (memory-mapped from disk or in memory)."""

    def __init__(self, prefix: dict[int, np.ndarray], base: dict[int, np.ndarray] | None):
        self.prefix, self.base = prefix, base

    @classmethod
    def build(cls, weights: Weights, cfg: ModelConfig, rows: Mapping[int, np.ndarray], k: int, *,
              with_base: bool, store: FrozenStore | None = None, mesh: Mesh | None = None,
              desc: str = "frozen cache", batch_tokens: int = BATCH_TOKENS) -> tuple["FrozenCache", str]:
        """The cache of `rows` ({row index: token ids}): rows `store` holds are reused, the others
        encoded (split over the `data` axis of `mesh` where they divide; every process keeps the
        whole cache) and added to `store`. Returns the cache and a line saying what was done."""
        hashes = {i: row_hash(r) for i, r in rows.items()}
        notes = []
        found = {}
        if store is not None:
            found, notes = store.find(set(hashes.values()))
        todo = {h: rows[i] for i, h in hashes.items() if h not in found}  # distinct rows to encode
        order = sorted(todo, key=lambda h: (len(todo[h]), h))  # canonical: the shard's layout
        t0 = time.perf_counter()
        wrote = None
        if order:
            writer = store.writer(order, [len(todo[h]) for h in order]) if store is not None else None
            prefix, base = encode_rows(weights, cfg, [todo[h] for h in order], k, with_base, mesh=mesh,
                                       batch_tokens=batch_tokens, sink=writer.write if writer else None, desc=desc)
            start = 0
            for h in order:
                n = len(todo[h])
                found[h] = (prefix[start: start + n], base[start: start + n] if with_base else None)
                start += n
            wrote = writer.commit(cfg.d_model) if writer else None
        seconds = time.perf_counter() - t0
        cache = cls({i: found[h][0] for i, h in hashes.items()},
                    {i: found[h][1] for i, h in hashes.items()} if with_base else None)
        reused = sum(h not in todo for h in hashes.values())
        line = f"frozen cache, {desc}: {reused} rows reused"
        line += f" from {store.dir}" if store is not None else ""
        line += f", {len(hashes) - reused} encoded"
        if order:
            line += f" at {len(order) / max(seconds, 1e-9):.1f} rows/s ({seconds:.1f} s)"
        if store is not None:
            line += f"; {wrote + ', ' if wrote else ''}the entry holds {store.size_bytes() / 2**20:.1f} MiB"
        else:
            line += " (in memory only)"
        return cache, "\n".join(notes + [line])

    def gather(self, indices: Sequence[int], width: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Right-padded [B, width, D] prefix (and base) for rows `indices`."""
        missing = [int(i) for i in indices if int(i) not in self.prefix]
        if missing:
            raise KeyError(f"rows {missing} are not in the frozen cache (it holds the {len(self.prefix)} rows "
                           "the run's steps were planned to draw)")

        def pad(arrs):
            first = arrs[int(indices[0])]
            out = np.zeros((len(indices), width, first.shape[-1]), first.dtype)
            for j, i in enumerate(indices):
                out[j, : len(arrs[int(i)])] = arrs[int(i)]
            return out
        return pad(self.prefix), (pad(self.base) if self.base is not None else None)
