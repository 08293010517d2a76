"""`Interventions`: everything applied on top of the frozen base weights (a LoRA adapter, steering
vectors, or both), and how it reaches the model.

Both parts are plain pytrees, separate from the base `Weights`, so `jax.grad` with respect to an
intervention alone and `jax.vmap` over a stacked set of interventions (norm and noise sweeps)
are one-liners. Static facts (which layers, which modules, the scale) are pytree metadata, so
two interventions with the same structure stack and vmap cleanly.

Inside the model an intervention becomes `LayerHooks` over a layer range (`layer_hooks`): per-layer
arrays with the same structure at every layer of the scan (zeros where a layer is not targeted),
applied by the block's one hook point (`emjax.model.hooks`).
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp

from emjax.interventions.lora import LoraAdapter
from emjax.interventions.steering import SteeringVectors
from emjax.model.config import ModelConfig
from emjax.model.hooks import LayerHooks, residual_sites


@flax.struct.dataclass
class Interventions:
    """Everything applied on top of the base weights; any part may be None."""

    lora: Optional[LoraAdapter] = None
    steer: Optional[SteeringVectors] = None

    def layer_hooks(self, start: int, stop: int) -> LayerHooks | None:
        """The hooks of layers [start, stop) (leading axis stop - start), or None if nothing
        applies there. LoRA scale and steering alpha are folded in."""
        lora_a, lora_b, steer = {}, {}, {}
        if self.lora is not None:
            for m in self.lora.modules:
                a = _scatter_layers(self.lora.a[m], self.lora.layers, start, stop)
                if a is not None:
                    lora_a[m] = a
                    lora_b[m] = _scatter_layers(self.lora.b[m] * self.lora.scale, self.lora.layers, start, stop)
        if self.steer is not None:
            v = _scatter_layers(self.steer.vectors * self.steer.alpha, self.steer.layers, start, stop)
            if v is not None:
                steer[self.steer.hook] = v
        if not lora_a and not steer:
            return None
        return LayerHooks(lora_a=lora_a, lora_b=lora_b, steer=steer)

    def shared_prefix_layers(self, cfg: ModelConfig) -> int:
        """n such that layers [0, n) compute the same function with and without this intervention.

        Below the lowest LoRA layer, and through the lowest steering layer when its vector sits at
        a residual site (`emjax.model.hooks.residual_sites`: the block itself is untouched and
        `emjax.model.decoder.run_suffix` adds the vector where the shared prefix ends). Those
        layers run once for the frozen and the intervened model, and once for a whole sweep.
        0 for an empty intervention.
        """
        ends = [self.lora.layers[0]] if self.lora is not None and self.lora.layers else []
        if self.steer is not None and self.steer.layers:
            first = self.steer.layers[0]
            ends.append(first + 1 if self.steer.hook in residual_sites(cfg) else first)
        return min(ends) if ends else 0


def shared_prefix_layers(iv: Interventions | None, cfg: ModelConfig) -> int:
    """`iv.shared_prefix_layers(cfg)`, 0 for no intervention."""
    return 0 if iv is None else iv.shared_prefix_layers(cfg)


def _scatter_layers(x: jax.Array, layers: tuple[int, ...], start: int, stop: int) -> jax.Array | None:
    """[n_sel, ...] rows at absolute `layers` -> [stop - start, ...], zero elsewhere; None if empty."""
    sel = [(i, l - start) for i, l in enumerate(layers) if start <= l < stop]
    if not sel:
        return None
    src, dst = zip(*sel)
    out = jnp.zeros((stop - start,) + x.shape[1:], x.dtype)
    return out.at[jnp.array(dst)].set(x[jnp.array(src)])
