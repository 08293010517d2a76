"""Where interventions enter a block: the one hook point of the decoder.

Every intervention reaches the model through a `LayerHooks` tree, built by its owner
(`emjax.interventions.Interventions.layer_hooks`) for a layer range, and is applied by the two
functions here, which the block calls and nothing else does:

  * `add_steering(hooks, site, x)`: a steering vector enters at a named site of the block:
      "mlp_out":   added to the output of `mlp.down_proj` (upstream's hook point; before
                   Gemma-2's post-feed-forward norm);
      "block_out": added to the residual stream after the whole block.
    Without a post-MLP norm (Llama, Qwen2) the two sites are the same function; with one
    (Gemma-2) they are not. This is the only place a steering vector is added to the model's
    activations. Every row of the batch is steered, unless the hooks come from
    `FirstRowSteering` (row 0 only: upstream's training defect, reproduced on request by the
    training step).
  * `add_lora(hooks, module, x, y)`: the unmerged LoRA delta `(x @ A) @ B` of a projection
    (`add_lora_shared` for projections of one input, their A side by side in one matmul).
  * `ablate(hooks, x)`: directional ablation, `x - (x . u) u` with a unit direction u, applied to
    the residual stream after the block (after the "block_out" vector, so a steered component
    along u is removed too); upstream's `projection=True` hook with scale -1 on the layer output.

Prefix sharing (layers below an intervention run once for the frozen and the intervened model)
is expressed through the same hook: when a block's only intervention is a vector at a site that
adds straight onto the residual stream (`residual_sites`), the block itself is the frozen one,
and `emjax.model.decoder.run_suffix` applies that block's hooks with `add_steering` to the frozen
residual it starts from.
"""

from __future__ import annotations

from typing import Literal, Protocol

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from emjax.model.config import ModelConfig

SITES = ("mlp_out", "block_out")
# Which rows of a batch a steering vector reaches: "all", or "first" (row 0 only; upstream's
# steering_vector_module.py adds `output[0] = output[0] + alpha * v` to a [B, T, D] tensor).
SteerRows = Literal["all", "first"]
STEER_ROWS = ("all", "first")


@flax.struct.dataclass
class LayerHooks:
    """Intervention arrays of the blocks of a layer range [start, stop), leading axis n = stop - start
    (inside the layer scan, one block's slice without that axis).

    Attributes:
      lora_a / lora_b: module -> [n, in, R] / [n, R, out]; the LoRA scale is folded into B.
      steer: site -> [n, D] applied steering vectors (alpha folded in).
      ablate: [n, D] unit directions projected out of the block's output, or None (zero rows for
        layers without one: projecting out the zero vector is the identity, exactly).
      steer_rows: the batch rows the steering vectors reach ("all", or "first": row 0 only).
    Layers of the range that an intervention does not target hold zeros.
    """

    lora_a: dict[str, jax.Array]
    lora_b: dict[str, jax.Array]
    steer: dict[str, jax.Array]
    ablate: jax.Array | None = None
    steer_rows: SteerRows = flax.struct.field(pytree_node=False, default="all")

    def layer(self, i: int) -> "LayerHooks":
        """The hooks of the i-th layer of the range (no layer axis)."""
        return jax.tree.map(lambda a: a[i], self)


class HookSource(Protocol):
    """What the decoder accepts as `interventions`: anything that can build `LayerHooks`."""

    def layer_hooks(self, start: int, stop: int) -> LayerHooks | None:
        """Hooks of layers [start, stop), or None when nothing applies there."""

    def shared_prefix_layers(self, cfg: ModelConfig) -> int:
        """n such that layers [0, n) compute the same function with and without the hooks."""


def hooks_for(source: HookSource | None, start: int, stop: int) -> LayerHooks | None:
    return None if source is None else source.layer_hooks(start, stop)


@flax.struct.dataclass
class FirstRowSteering:
    """`inner` (any `HookSource`) with its steering vectors added to row 0 of each batch only; its
    other hooks unchanged. Reproduces upstream's steering trainer, whose forward hook
    (steering_vector_module.py) does `output[0] = output[0] + alpha * v` on the [B, T, D] down_proj
    output and so steers the first row of every batch. Row 0 is the batch's global row 0 (jit
    semantics), also when the rows are sharded over devices; under `jax.vmap` over runs the row
    axis is the leading axis the block sees."""

    inner: HookSource

    def layer_hooks(self, start: int, stop: int) -> LayerHooks | None:
        hooks = self.inner.layer_hooks(start, stop)
        return None if hooks is None else hooks.replace(steer_rows="first")

    def shared_prefix_layers(self, cfg: ModelConfig) -> int:
        return self.inner.shared_prefix_layers(cfg)


def add_steering(hooks: LayerHooks | None, site: str, x: jax.Array) -> jax.Array:
    """x + the steering vector of `site` (if any): x [B, ..., D], the vector [D] (or per row, see
    `emjax.model.row_hooks.RowSteer`), on every row or, with steer_rows "first", on row 0 only
    (the other rows are returned exactly)."""
    if hooks is None or site not in hooks.steer:
        return x
    steered = x + hooks.steer[site].astype(x.dtype)
    if hooks.steer_rows == "all":
        return steered
    first = (jnp.arange(x.shape[0]) == 0).reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.where(first, steered, x)


def add_lora(hooks: LayerHooks | None, module: str, x: jax.Array, y: jax.Array) -> jax.Array:
    """y + the unmerged LoRA delta (x @ A) @ B of projection `module` (if targeted).

    x: [..., in] the projection's input; y: [..., out] its output.
    """
    if hooks is None or module not in hooks.lora_a:
        return y
    a, b = hooks.lora_a[module].astype(x.dtype), hooks.lora_b[module].astype(x.dtype)
    return y + (x @ a) @ b


def add_lora_shared(hooks: LayerHooks | None, modules: tuple[str, ...], x: jax.Array,
                    ys: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """`add_lora` of several projections of the same input x (q/k/v, gate/up): the targeted modules'
    down-projections run as one matmul x @ [A_1 | A_2 | ...] (one read of x, one [.., in] gradient
    product in the backward instead of one per module), then each (x @ A_i) @ B_i as in `add_lora`.

    x: [..., in]; ys: the projections' outputs, in the order of `modules`.
    """
    present = [m for m in modules if hooks is not None and m in hooks.lora_a]
    # per-row adapters (emjax.model.row_hooks.RowLoraA) keep their own masked products
    if len(present) < 2 or not all(isinstance(hooks.lora_a[m], jax.Array) for m in present):
        return tuple(add_lora(hooks, m, x, y) for m, y in zip(modules, ys))
    a = jnp.concatenate([hooks.lora_a[m].astype(x.dtype) for m in present], axis=-1)
    ends = np.cumsum([hooks.lora_a[m].shape[-1] for m in present])[:-1].tolist()
    down = dict(zip(present, jnp.split(x @ a, ends, axis=-1)))
    return tuple(y + down[m] @ hooks.lora_b[m].astype(x.dtype) if m in down else y for m, y in zip(modules, ys))


def ablate(hooks: LayerHooks | None, x: jax.Array) -> jax.Array:
    """x [..., D] with the component along the block's ablated unit direction u [D] removed:
    x - (x . u) u, the dot product in float32."""
    if hooks is None or hooks.ablate is None:
        return x
    u = hooks.ablate.astype(jnp.float32)
    along = jnp.einsum("...d,d->...", x.astype(jnp.float32), u)
    return (x.astype(jnp.float32) - along[..., None] * u).astype(x.dtype)


def residual_sites(cfg: ModelConfig) -> tuple[str, ...]:
    """Sites where an added vector goes straight onto the residual stream after the block:
    "block_out" always, and "mlp_out" where nothing follows the MLP (no post-MLP norm: Llama,
    Qwen2; Gemma-2 normalises the MLP output, vector included, so its mlp_out vector changes the
    block itself)."""
    return ("block_out",) if cfg.post_mlp_norm else SITES
