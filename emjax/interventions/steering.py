"""Steering vectors as pytrees: `alpha * v` added at every position of every sequence, at a named
site of the targeted blocks (`emjax.model.hooks.SITES`: "mlp_out", "block_out")."""

from __future__ import annotations

from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp

from emjax.model.config import ModelConfig
from emjax.model.hooks import SITES

HookPoint = Literal["mlp_out", "block_out"]
HOOK_POINTS = SITES


@flax.struct.dataclass
class SteeringVectors:
    """Steering vectors added at every position of every sequence.

    The applied vector at layer `layers[i]` is `alpha * vectors[i]`.

    Attributes:
      vectors: [n_sel, D] trainable directions.
      layers: the targeted layer indices, ascending.
      alpha: fixed multiplier (upstream: 256).
      hook: where in the block the vector is added (see HOOK_POINTS).
    """

    vectors: jax.Array
    layers: tuple[int, ...] = flax.struct.field(pytree_node=False)
    alpha: float = flax.struct.field(pytree_node=False, default=1.0)
    hook: str = flax.struct.field(pytree_node=False, default="mlp_out")


def init_steering(cfg: ModelConfig, *, layers: tuple[int, ...] | None = None, alpha: float = 1.0,
                  hook: HookPoint = "mlp_out", dtype=jnp.float32) -> SteeringVectors:
    """Zero vectors (upstream starts at 0) at `layers` (default: the middle layer)."""
    if hook not in HOOK_POINTS:
        raise ValueError(f"unknown steering hook {hook!r}; choose from {HOOK_POINTS}")
    layers = (cfg.middle_layer,) if layers is None else tuple(sorted(set(layers)))
    bad = [l for l in layers if not 0 <= l < cfg.n_layers]
    if bad:
        raise ValueError(f"steering layers {bad} out of range [0, {cfg.n_layers})")
    return SteeringVectors(vectors=jnp.zeros((len(layers), cfg.d_model), dtype), layers=layers,
                           alpha=float(alpha), hook=hook)
