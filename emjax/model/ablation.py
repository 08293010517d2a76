"""Directional ablation: project a direction out of the residual stream at chosen layers.

    abl = direction_ablation(cfg, directions)            # [L, D] or [D] (same direction everywhere)
    logits = forward(weights, cfg, tokens, interventions=ablated(iv, abl))   # iv may be None

After block l (`layers`), the residual stream x becomes x - (x . u_l) u_l with u_l = d_l / ||d_l||,
at every position: upstream's ablation hook (`activation_steering.py`, `projection=True`,
scale -1 on the output of `model.layers[l]`). It is applied after that block's steering vector,
so ablating the general direction from a steered model also removes the steered component.

`Ablated` wraps any `HookSource` (an `Interventions`, a per-row `RowInterventions`, or None) and is
one itself, so the forward, the sweeps and the sampler take it where they take an intervention.
The ablation is not trained: it is a constant of the wrapper, never part of a trained tree.
"""

from __future__ import annotations

from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from emjax.errors import EmjaxError
from emjax.model.config import ModelConfig
from emjax.model.hooks import HookSource, LayerHooks


class AblationError(EmjaxError, ValueError):
    """A direction that cannot be ablated (wrong width, zero, layer out of range)."""


@flax.struct.dataclass
class DirectionAblation:
    """Unit directions projected out after blocks `layers`.

    Attributes:
      units: [n_sel, D] float32 unit vectors, row i for layer layers[i].
      layers: ablated layer indices, ascending.
    """

    units: jax.Array
    layers: tuple[int, ...] = flax.struct.field(pytree_node=False)

    def rows(self, start: int, stop: int) -> jax.Array | None:
        """[stop - start, D] units for layers [start, stop), zero rows where nothing is ablated;
        None when no ablated layer lies in the range."""
        sel = [(i, l - start) for i, l in enumerate(self.layers) if start <= l < stop]
        if not sel:
            return None
        src, dst = zip(*sel)
        out = jnp.zeros((stop - start, self.units.shape[-1]), self.units.dtype)
        return out.at[jnp.array(dst)].set(self.units[jnp.array(src)])


def direction_ablation(cfg: ModelConfig, directions, layers: Sequence[int] | None = None) -> DirectionAblation:
    """A `DirectionAblation` from raw (unnormalised) directions.

    directions: [D] (one direction for every ablated layer) or [L, D] (direction l for layer l;
      layers then picks rows of it) or [len(layers), D] (one per listed layer).
    layers: which blocks' outputs to ablate (default: every layer).
    """
    d = np.asarray(directions, np.float32)
    if d.shape[-1] != cfg.d_model or d.ndim not in (1, 2):
        raise AblationError(f"an ablation direction must be [D] or [n, D] with D = {cfg.d_model}, got {d.shape}")
    layers = tuple(range(cfg.n_layers)) if layers is None else tuple(sorted(set(int(l) for l in layers)))
    bad = [l for l in layers if not 0 <= l < cfg.n_layers]
    if bad:
        raise AblationError(f"ablation layers {bad} out of range [0, {cfg.n_layers})")
    if d.ndim == 1:
        d = np.broadcast_to(d, (len(layers), cfg.d_model))
    elif d.shape[0] == cfg.n_layers:
        d = d[list(layers)]
    elif d.shape[0] != len(layers):
        raise AblationError(f"{d.shape[0]} directions for {len(layers)} ablated layers (give [D], [L={cfg.n_layers}, D] "
                            f"or one per layer)")
    norms = np.linalg.norm(d, axis=-1, keepdims=True)
    if (norms == 0).any():
        zero = [layers[i] for i in np.flatnonzero(norms[:, 0] == 0)]
        raise AblationError(f"the ablation direction of layers {zero} is zero")
    return DirectionAblation(units=jnp.asarray(d / norms), layers=layers)


@flax.struct.dataclass
class Ablated:
    """`inner` (any `HookSource`, or None for the base model) with `ablation` applied."""

    inner: HookSource | None
    ablation: DirectionAblation

    def layer_hooks(self, start: int, stop: int) -> LayerHooks | None:
        rows = self.ablation.rows(start, stop)
        hooks = None if self.inner is None else self.inner.layer_hooks(start, stop)
        if rows is None:
            return hooks
        if hooks is None:
            return LayerHooks(lora_a={}, lora_b={}, steer={}, ablate=rows)
        return hooks.replace(ablate=rows)

    def shared_prefix_layers(self, cfg: ModelConfig) -> int:
        """Blocks below the first ablated one are unchanged by the ablation."""
        inner = cfg.n_layers if self.inner is None else self.inner.shared_prefix_layers(cfg)
        return min(inner, self.ablation.layers[0]) if self.ablation.layers else inner

    def take(self, index: jax.Array) -> "Ablated":
        """Rows `index` of a per-row inner source (the sampler's prompt -> row expansion)."""
        take = getattr(self.inner, "take", None)
        return self if take is None else self.replace(inner=take(index))


def ablated(inner: HookSource | None, ablation: DirectionAblation | None) -> HookSource | None:
    """`inner` with `ablation` applied (`inner` itself when there is no ablation)."""
    return inner if ablation is None else Ablated(inner, ablation)
