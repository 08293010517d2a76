"""Cache of what the frozen model computes on fixed data, reused across epochs.

For an intervention whose lowest layer is k, the residual stream entering layer k ("prefix")
never changes during training, and neither do the frozen model's final hidden states on the KL
set (the base side of the KL). Both are computed once per row and kept in host memory, trimmed to
each row's length; a batch gathers and pads them. The base *logits* are not cached (a row of
152k-wide float32 logits per token would not fit): the final hidden states are, and the base
logits are recomputed from them by the unembedding alone, a small fraction of a forward pass.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from emjax.data.tokenize import pad_batch
from emjax.model.config import ModelConfig
from emjax.model.mesh_plan import fetch, put_rows
from emjax.model.schema import Weights
from emjax.train.step import frozen_outputs


def cache_bytes(lengths: Sequence[int], cfg: ModelConfig, itemsize: int, with_base: bool) -> int:
    """Host bytes the cache of rows with these lengths takes."""
    return int(sum(lengths)) * cfg.d_model * itemsize * (2 if with_base else 1)


class FrozenCache:
    """Per-row frozen activations: prefix[i] [len_i, D] and, for KL rows, base[i] [len_i, D]."""

    def __init__(self, prefix: list[np.ndarray], base: list[np.ndarray] | None):
        self.prefix, self.base = prefix, base

    @classmethod
    def build(cls, weights: Weights, cfg: ModelConfig, rows: Sequence[np.ndarray], k: int, *,
              with_base: bool, batch_size: int = 8, desc: str = "frozen cache", mesh: Mesh | None = None
              ) -> "FrozenCache":
        """Runs the frozen model over `rows` (token ids) in batches of similar length (rows split over
        the `data` axis of `mesh` where they divide; every process keeps the whole cache)."""
        order = np.argsort([len(r) for r in rows], kind="stable")  # less padding per batch
        prefix: list = [None] * len(rows)
        base: list | None = [None] * len(rows) if with_base else None
        for s in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch"):
            idx = order[s: s + batch_size]
            b = pad_batch([rows[i] for i in idx])
            tokens, mask = put_rows((b["tokens"], b["mask"]), mesh)
            x, xb = fetch(frozen_outputs(weights, cfg, tokens, mask, k, with_base))
            for j, i in enumerate(idx):
                n = len(rows[i])
                prefix[i] = x[j, :n].copy()
                if with_base:
                    base[i] = xb[j, :n].copy()
        return cls(prefix, base)

    def gather(self, indices: Sequence[int], width: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Right-padded [B, width, D] prefix (and base) for rows `indices`."""
        def pad(arrs):
            out = np.zeros((len(indices), width, arrs[indices[0]].shape[-1]), arrs[indices[0]].dtype)
            for j, i in enumerate(indices):
                out[j, : len(arrs[i])] = arrs[i]
            return out
        return pad(self.prefix), (pad(self.base) if self.base is not None else None)
