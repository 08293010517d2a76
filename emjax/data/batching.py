"""Deterministic, resumable batching: a seed fixes the row order of every epoch, and the position
is a small dict that a checkpoint carries."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from emjax.data.tokenize import Row, pad_batch


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """Row order of `epoch`: `np.random.default_rng([seed, epoch]).permutation(n)`, [n] int64.

    Depends only on (seed, epoch, n), so any epoch can be recomputed on resume.
    """
    return np.random.default_rng([seed, epoch]).permutation(n)


class Batcher:
    """Yields padded batches in a seed-determined order, epoch after epoch, and can resume.

    Epoch e visits rows in `epoch_permutation(n, seed, e)` order, `batch_size` rows per batch;
    `drop_last=True` drops the final partial batch of each epoch (all batches then have the same
    shape), `drop_last=False` yields it smaller. The position is (epoch, index of the next batch
    within that epoch); `state()` / `from_state()` carry it through a checkpoint so a resumed run
    sees exactly the batches the interrupted one would have seen.

    Iterating is endless unless `max_epochs` is set. Each batch is `pad_batch(...)` of its rows
    plus `indices` [B] int64 (row indices into `rows`).
    """

    def __init__(self, rows: Sequence[Row | np.ndarray], batch_size: int, seed: int, *,
                 drop_last: bool = True, max_epochs: int | None = None,
                 position: tuple[int, int] = (0, 0), **pad_kwargs: Any):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if drop_last and len(rows) < batch_size:
            raise ValueError(f"{len(rows)} rows cannot fill one batch of {batch_size} (drop_last=True)")
        if not len(rows):
            raise ValueError("Batcher needs at least one row")
        self.rows = rows
        self.batch_size = batch_size
        self.seed = int(seed)
        self.drop_last = drop_last
        self.max_epochs = max_epochs
        self.pad_kwargs = pad_kwargs
        self._perm_epoch, self._perm = -1, np.empty(0, np.int64)
        self.seek(*position)

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    @property
    def position(self) -> tuple[int, int]:
        """(epoch, index within epoch) of the next batch."""
        return self.epoch, self.index

    def seek(self, epoch: int, index: int) -> None:
        """Move to batch `index` of `epoch` (index == batches_per_epoch means the epoch's end)."""
        if epoch < 0 or not 0 <= index <= self.batches_per_epoch:
            raise ValueError(f"position ({epoch}, {index}) out of range "
                             f"({self.batches_per_epoch} batches per epoch)")
        self.epoch, self.index = int(epoch), int(index)

    def state(self) -> dict[str, int | bool]:
        """Small JSON/Orbax-friendly dict: position plus what must match on resume."""
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "n": self.n,
                "batch_size": self.batch_size, "drop_last": self.drop_last}

    @classmethod
    def from_state(cls, rows: Sequence[Row | np.ndarray], state: dict, **kwargs: Any) -> "Batcher":
        """Rebuild at the saved position; rows must be the same data set (checked by count)."""
        if len(rows) != int(state["n"]):
            raise ValueError(f"checkpoint data order was for {state['n']} rows, got {len(rows)}: "
                             "resuming on different data would not repeat the same batches")
        return cls(rows, int(state["batch_size"]), int(state["seed"]),
                   drop_last=bool(state["drop_last"]),
                   position=(int(state["epoch"]), int(state["index"])), **kwargs)

    def next_indices(self) -> np.ndarray:
        """Row indices [B] of the next batch; advances the position."""
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        if self.max_epochs is not None and self.epoch >= self.max_epochs:
            raise StopIteration
        if self._perm_epoch != self.epoch:  # cache: one permutation per epoch
            self._perm_epoch, self._perm = self.epoch, epoch_permutation(self.n, self.seed, self.epoch)
        start = self.index * self.batch_size
        idx = self._perm[start: start + self.batch_size]
        self.index += 1
        return idx

    def upcoming_rows(self, n_batches: int) -> np.ndarray:
        """Sorted distinct row indices [m] that the next `n_batches` batches draw (what a cache of
        per-row work needs to hold for them); the position is left unchanged."""
        saved = self.position
        seen = np.zeros(self.n, bool)
        try:
            for _ in range(n_batches):
                seen[self.next_indices()] = True
                if seen.all():
                    break
        except StopIteration:  # max_epochs reached: nothing further is drawn
            pass
        finally:
            self.seek(*saved)
        return np.flatnonzero(seen)

    def __iter__(self) -> "Batcher":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        idx = self.next_indices()
        batch = pad_batch([self.rows[int(i)] for i in idx], **self.pad_kwargs)
        batch["indices"] = idx
        return batch
