"""LoRA adapters as pytrees: `y = x @ W + scale * (x @ A) @ B`, always unmerged, so a vmap over K
adapters never copies W. The adapter enters the model inside each targeted projection
(`emjax.model.hooks.add_lora`)."""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp

from emjax.model.config import ModelConfig
from emjax.model.schema import PROJECTIONS, layer_shapes


@flax.struct.dataclass
class LoraAdapter:
    """A LoRA adapter over a subset of layers and projections.

    Attributes:
      a: module name -> [n_sel, in, R] (random at init).
      b: module name -> [n_sel, R, out] (zero at init).
      layers: the n_sel targeted layer indices, ascending.
      scale: multiplier of the low-rank update: alpha / sqrt(R) (rsLoRA) or alpha / R.
    """

    a: dict[str, jax.Array]
    b: dict[str, jax.Array]
    layers: tuple[int, ...] = flax.struct.field(pytree_node=False)
    scale: float = flax.struct.field(pytree_node=False)

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(sorted(self.a))

    @property
    def rank(self) -> int:
        return next(iter(self.a.values())).shape[-1]


def init_lora(cfg: ModelConfig, key: jax.Array, *, rank: int, alpha: float,
              modules: tuple[str, ...] = PROJECTIONS, layers: tuple[int, ...] | None = None,
              rslora: bool = True, dtype=jnp.float32) -> LoraAdapter:
    """PEFT-style init: A ~ kaiming-uniform(a=sqrt(5)) i.e. U(-1/sqrt(in), 1/sqrt(in)), B = 0."""
    unknown = set(modules) - set(PROJECTIONS)
    if unknown:
        raise ValueError(f"unknown LoRA target modules {sorted(unknown)}; choose from {PROJECTIONS}")
    layers = tuple(range(cfg.n_layers)) if layers is None else tuple(sorted(set(layers)))
    bad = [l for l in layers if not 0 <= l < cfg.n_layers]
    if bad:
        raise ValueError(f"LoRA layers {bad} out of range [0, {cfg.n_layers})")
    shapes = layer_shapes(cfg)
    a, b = {}, {}
    for m, k in zip(sorted(modules), jax.random.split(key, len(modules))):
        d_in, d_out = shapes[m]
        bound = 1.0 / math.sqrt(d_in)
        a[m] = jax.random.uniform(k, (len(layers), d_in, rank), dtype, -bound, bound)
        b[m] = jnp.zeros((len(layers), rank, d_out), dtype)
    scale = alpha / math.sqrt(rank) if rslora else alpha / rank
    return LoraAdapter(a=a, b=b, layers=layers, scale=float(scale))
