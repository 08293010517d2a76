"""Interventions on a frozen decoder: LoRA adapters and residual-stream steering vectors.

Both are plain pytrees, separate from the base `Weights`, so `jax.grad` with respect to an
intervention alone and `jax.vmap` over a stacked set of interventions (norm and noise sweeps)
are one-liners. Static facts (which layers, which modules, the scale) are pytree metadata, so
two interventions with the same structure stack and vmap cleanly.

Inside the model, an intervention is "densified" into per-layer arrays over a layer range, so
the layer scan sees the same structure at every layer (zeros where a layer is not targeted).
LoRA always stays unmerged: `y = x @ W + scale * (x @ A) @ B`, and a vmap over K adapters never
copies W.
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import flax.struct
import jax
import jax.numpy as jnp

from emjax.config import ModelConfig
from emjax.params import PROJECTIONS, layer_shapes

# Where a steering vector is added:
#   "mlp_out":   to the output of `mlp.down_proj` (upstream's hook point; before Gemma-2's
#                post-feed-forward norm);
#   "block_out": to the residual stream after the whole block.
# For Qwen2 the two are the same function; for Gemma-2 they are not.
HookPoint = Literal["mlp_out", "block_out"]
HOOK_POINTS = ("mlp_out", "block_out")


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


@flax.struct.dataclass
class Interventions:
    """Everything applied on top of the base weights; any part may be None."""

    lora: Optional[LoraAdapter] = None
    steer: Optional[SteeringVectors] = None


# ---------------------------------------------------------------------------------------------
# Prefix sharing: which leading layers the frozen model and the intervened model have in common


def _steer_is_residual_add(steer: SteeringVectors, cfg: ModelConfig) -> bool:
    """True when the vector is added straight onto the residual stream after its block: the
    block_out hook, or mlp_out on a model with no norm after the MLP (Qwen2; Gemma-2 normalises
    the MLP output, vector included, so its mlp_out vector changes the block itself)."""
    return steer.hook == "block_out" or not cfg.is_gemma


def shared_prefix_layers(iv: Interventions | None, cfg: ModelConfig) -> int:
    """n such that layers [0, n) compute the same function with and without `iv`.

    Below the lowest LoRA layer, and through the lowest steering layer when its vector is a plain
    residual add (the block itself is untouched; `enter_layer` adds the vector where the shared
    prefix ends). Those layers run once for the frozen and the intervened model, and once for a
    whole sweep. 0 for an empty intervention.
    """
    if iv is None:
        return 0
    ends = [iv.lora.layers[0]] if iv.lora is not None and iv.lora.layers else []
    if iv.steer is not None and iv.steer.layers:
        first = iv.steer.layers[0]
        ends.append(first + 1 if _steer_is_residual_add(iv.steer, cfg) else first)
    return min(ends) if ends else 0


def enter_layer(iv: Interventions | None, cfg: ModelConfig, x: jax.Array, start: int) -> jax.Array:
    """The intervened residual entering layer `start`, given the frozen model's residual there.

    x: [..., T, D]. Adds the steering vector of layer start - 1 when the shared prefix took that
    layer in (see `shared_prefix_layers`); the rest of `iv` is applied by running layers
    [start, L) with it. (In low precision the vector is added after the block's residual sum
    instead of inside it: the same function up to rounding order.)
    """
    if iv is None or start == 0:
        return x
    limit = shared_prefix_layers(iv, cfg)
    if start > limit:
        raise ValueError(f"the frozen prefix [0, {start}) covers intervened layers; the shared prefix "
                         f"of this intervention ends at layer {limit}")
    if iv.steer is not None and start - 1 in iv.steer.layers:
        i = iv.steer.layers.index(start - 1)
        x = x + (iv.steer.vectors[i] * iv.steer.alpha).astype(x.dtype)
    return x


# ---------------------------------------------------------------------------------------------
# Construction


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


# ---------------------------------------------------------------------------------------------
# Per-layer dense form used inside the layer scan


@flax.struct.dataclass
class DenseLayerIntervention:
    """Per-layer intervention arrays over a layer range [start, stop) (leading axis n = stop-start).

    lora_a / lora_b: module -> [n, in, R] / [n, R, out], already multiplied by the LoRA scale
    (folded into B); steer_mlp / steer_block: [n, D] applied vectors (alpha folded in) or None.
    """

    lora_a: dict[str, jax.Array]
    lora_b: dict[str, jax.Array]
    steer_mlp: Optional[jax.Array] = None
    steer_block: Optional[jax.Array] = None


def _scatter_layers(x: jax.Array, layers: tuple[int, ...], start: int, stop: int) -> jax.Array | None:
    """[n_sel, ...] rows at absolute `layers` -> [stop - start, ...], zero elsewhere; None if empty."""
    sel = [(i, l - start) for i, l in enumerate(layers) if start <= l < stop]
    if not sel:
        return None
    src, dst = zip(*sel)
    out = jnp.zeros((stop - start,) + x.shape[1:], x.dtype)
    return out.at[jnp.array(dst)].set(x[jnp.array(src)])


def densify(iv: Interventions | None, start: int, stop: int) -> DenseLayerIntervention | None:
    """The dense per-layer form of `iv` over [start, stop), or None if nothing applies there."""
    if iv is None:
        return None
    lora_a, lora_b, steer_mlp, steer_block = {}, {}, None, None
    if iv.lora is not None:
        for m in iv.lora.modules:
            a = _scatter_layers(iv.lora.a[m], iv.lora.layers, start, stop)
            if a is not None:
                lora_a[m] = a
                lora_b[m] = _scatter_layers(iv.lora.b[m] * iv.lora.scale, iv.lora.layers, start, stop)
    if iv.steer is not None:
        v = _scatter_layers(iv.steer.vectors * iv.steer.alpha, iv.steer.layers, start, stop)
        if iv.steer.hook == "mlp_out":
            steer_mlp = v
        else:
            steer_block = v
    if not lora_a and steer_mlp is None and steer_block is None:
        return None
    return DenseLayerIntervention(lora_a=lora_a, lora_b=lora_b, steer_mlp=steer_mlp, steer_block=steer_block)
