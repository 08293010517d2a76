"""Many interventions in one batch: every row of a batch picks one member of an `InterventionSet`.

    iset = intervention_set(cfg, [None, steer_a, steer_b, lora])     # K = 4 members
    logits = forward(weights, cfg, tokens, mask, interventions=iset.select(rows))   # rows [B] int
    sampling.generate(weights, cfg, prompts, interventions=iset, intervention_index=rows, ...)

Members may differ in kind, layers, modules, rank, scale and alpha: each becomes its `LayerHooks`
over all layers (scale and alpha folded in, zeros where it does not act) and the set merges them:

  * steering: site -> [L, K, D], member k's vector in column k (zeros for members without it);
  * LoRA: module -> A [L, in, C] and B [L, C, out], the members' rank columns side by side
    (C = the sum of their ranks), with the member of each column [C].

`RowInterventions` (a set and a member index per row, -1 for none) is a `HookSource`: it enters the
model through the one hook point (`emjax.model.hooks`) unchanged, as per-row leaves that the
hook's own arithmetic applies row by row:

  * `RowSteer`: `x + v` adds row b's vector `table[rows[b]]` ([B, D], gathered inside the add);
  * `RowLoraA`: `x @ a` is `x @ A_all` [B, T, C] with every column outside row b's member zeroed,
    so the hook's `(x @ a) @ b` is row b's own `(x @ A_k) @ B_k`.

Why side by side rather than gathering A / B per row ([B, in, R]): the gather materialises B copies
of the adapter at every layer and step (all-module r32 on Qwen2.5-14B at 400 rows: 2.3 GB per
layer per token), while side by side reads each member's matrices once per step (K x the
adapter) and adds K x R columns to two skinny matmuls. Zeroed columns add exact zeros, so a row
computes its member's delta up to the summation order of one matmul.
"""

from __future__ import annotations

from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from emjax.model.config import ModelConfig
from emjax.model.hooks import HookSource, LayerHooks


@flax.struct.dataclass
class RowSteer:
    """Per-row steering vectors at one site of one block: table [K + 1, D] (the last row zero, for
    rows without an intervention), rows [B] int32 into it. Inside a `LayerHooks` of a layer range
    both carry the range's leading layer axis."""

    table: jax.Array
    rows: jax.Array

    def astype(self, dtype) -> "RowSteer":
        return self.replace(table=self.table.astype(dtype))

    def __radd__(self, x: jax.Array) -> jax.Array:
        """x [B, ..., D] + row b's vector on every position of row b."""
        v = jnp.take(self.table, self.rows, axis=0)  # [B, D]
        return x + v.reshape((v.shape[0],) + (1,) * (x.ndim - 2) + v.shape[-1:])


@flax.struct.dataclass
class RowLoraA:
    """Per-row LoRA down-projection of one module of one block: a [in, C] (all members' A side by
    side), member [C] int32 (whose column), rows [B] int32 (each row's member; -1 none)."""

    a: jax.Array
    member: jax.Array
    rows: jax.Array

    def astype(self, dtype) -> "RowLoraA":
        return self.replace(a=self.a.astype(dtype))

    def __rmatmul__(self, x: jax.Array) -> jax.Array:
        """x [B, ..., in] -> [B, ..., C]: x @ a with the columns of other members zeroed."""
        z = x @ self.a
        keep = self.rows[:, None] == self.member[None, :]  # [B, C]
        keep = keep.reshape((keep.shape[0],) + (1,) * (z.ndim - 2) + keep.shape[-1:])
        return jnp.where(keep, z, jnp.zeros((), z.dtype))  # where, not *: exact zeros


@flax.struct.dataclass
class InterventionSet:
    """K interventions merged over all L layers (see the module docstring).

    Attributes:
      steer: site -> [L, K, D] applied vectors (alpha folded in).
      lora_a / lora_b: module -> [L, in, C] / [L, C, out] (scale folded into B).
      lora_member: module -> [C] int32, the member owning each rank column.
      size: K, the number of members.
      prefix: layers [0, prefix) that every member leaves unchanged (`shared_prefix_layers`).
    """

    steer: dict[str, jax.Array]
    lora_a: dict[str, jax.Array]
    lora_b: dict[str, jax.Array]
    lora_member: dict[str, jax.Array]
    size: int = flax.struct.field(pytree_node=False)
    prefix: int = flax.struct.field(pytree_node=False, default=0)

    def select(self, rows) -> "RowInterventions":
        """The set applied with member rows[b] on row b (-1: no intervention). rows: [B] int."""
        return RowInterventions(self, jnp.asarray(rows, jnp.int32))


@flax.struct.dataclass
class RowInterventions:
    """A `HookSource`: member `rows[b]` of `iset` on row b of the batch (-1: none)."""

    iset: InterventionSet
    rows: jax.Array

    def take(self, index: jax.Array) -> "RowInterventions":
        """The rows `index` [B'] of this batch (e.g. each sample of a shared prompt)."""
        return self.replace(rows=jnp.take(self.rows, index, axis=0))

    def layer_hooks(self, start: int, stop: int) -> LayerHooks | None:
        s = self.iset
        if not s.steer and not s.lora_a:
            return None
        n, b = stop - start, self.rows.shape[0]
        rows = jnp.broadcast_to(self.rows, (n, b))
        steer = {}
        for site, v in s.steer.items():
            v = v[start:stop]  # [n, K, D]; row -1 reads the appended zero vector
            table = jnp.concatenate([v, jnp.zeros((n, 1, v.shape[-1]), v.dtype)], axis=1)
            steer[site] = RowSteer(table, jnp.where(rows < 0, s.size, rows))
        lora_a = {m: RowLoraA(a[start:stop], jnp.broadcast_to(s.lora_member[m], (n,) + s.lora_member[m].shape), rows)
                  for m, a in s.lora_a.items()}
        lora_b = {m: bm[start:stop] for m, bm in s.lora_b.items()}
        return LayerHooks(lora_a=lora_a, lora_b=lora_b, steer=steer)

    def shared_prefix_layers(self, cfg: ModelConfig) -> int:
        return self.iset.prefix


def unstack(tree) -> list:
    """The K members of a tree whose leaves carry a leading K axis (`stack_trees`,
    `rescale_to_norms`, ...) as a list of K trees."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError("unstack: the tree has no array leaves")
    return [jax.tree.map(lambda x: x[k], tree) for k in range(leaves[0].shape[0])]


def intervention_set(cfg: ModelConfig, members: Sequence[HookSource | None]) -> InterventionSet:
    """Merges K interventions (any `HookSource`; None for the base model) into one set.

    A stacked tree (leaves with a leading K axis) enters as `*unstack(tree)`.
    """
    if not members:
        raise ValueError("an intervention set needs at least one member (None for the base model)")
    n_layers = cfg.n_layers
    hooks = [None if m is None else m.layer_hooks(0, n_layers) for m in members]
    k = len(members)
    steer = {}
    for site in sorted({s for h in hooks if h is not None for s in h.steer}):
        present = [h.steer[site] for h in hooks if h is not None and site in h.steer]
        dtype = jnp.result_type(*present)
        zero = jnp.zeros_like(present[0], dtype)
        steer[site] = jnp.stack([zero if h is None or site not in h.steer else h.steer[site].astype(dtype)
                                 for h in hooks], axis=1)  # [L, K, D]
    lora_a, lora_b, lora_member = {}, {}, {}
    for m in sorted({mod for h in hooks if h is not None for mod in h.lora_a}):
        owners = [(i, h) for i, h in enumerate(hooks) if h is not None and m in h.lora_a]
        dtype = jnp.result_type(*[h.lora_a[m] for _, h in owners], *[h.lora_b[m] for _, h in owners])
        lora_a[m] = jnp.concatenate([h.lora_a[m].astype(dtype) for _, h in owners], axis=-1)  # [L, in, C]
        lora_b[m] = jnp.concatenate([h.lora_b[m].astype(dtype) for _, h in owners], axis=-2)  # [L, C, out]
        lora_member[m] = jnp.asarray(np.concatenate([np.full(h.lora_a[m].shape[-1], i, np.int32)
                                                     for i, h in owners]))
    active = [mem.shared_prefix_layers(cfg) for mem, h in zip(members, hooks) if h is not None]
    return InterventionSet(steer=steer, lora_a=lora_a, lora_b=lora_b, lora_member=lora_member, size=k,
                           prefix=min(active) if active else 0)
