"""Prefix sharing: the frozen pass below an intervention, and the losses of the intervened suffix.

For an intervention whose shared prefix ends at layer k (`Interventions.shared_prefix_layers`),
layers [0, k) compute the same function with and without it. `frozen_pass` runs them once (and,
for the KL, the frozen model's remaining layers); `suffix_ce` / `suffix_kl` run layers [k, L) under
the intervention from that prefix. Training (`emjax.train.step`), the frozen-model cache and the
sweeps (`emjax.metrics.sweeps`) all go through these three functions.
"""

from __future__ import annotations

import jax

from emjax.model import decoder as D
from emjax.model.config import ModelConfig
from emjax.model.decoder import RematPolicy
from emjax.model.hooks import HookSource
from emjax.model.layers import default_positions
from emjax.model.schema import Weights
from emjax.train.losses import cross_entropy, kl_base_to_adapted


def frozen_pass(weights: Weights, cfg: ModelConfig, tokens: jax.Array, mask: jax.Array, k: int,
                with_base: bool, attention: str = "xla", unroll: bool = False) -> tuple[jax.Array, jax.Array | None]:
    """What the frozen model computes: the residual entering layer k [B, T, D] and, with
    `with_base`, its final hidden state [B, T, D] (else None). No gradient flows through either.
    `unroll` as in `emjax.model.decoder.run_layers`."""
    pos = default_positions(mask)
    x = D.run_layers(weights, cfg, D.embed(weights, cfg, tokens), pos, mask, 0, k, attention=attention, unroll=unroll)
    x = jax.lax.stop_gradient(x)
    if not with_base:
        return x, None
    return x, jax.lax.stop_gradient(D.run_layers(weights, cfg, x, pos, mask, k, cfg.n_layers, attention=attention,
                                                 unroll=unroll))


def suffix_ce(iv: HookSource | None, weights: Weights, cfg: ModelConfig, k: int, x: jax.Array, mask: jax.Array,
              targets: jax.Array, loss_mask: jax.Array, *, remat: RematPolicy = None, attention: str = "xla",
              loss_chunk: int | None = None, unroll: bool = False) -> tuple[jax.Array, jax.Array]:
    """(summed next-token CE on `loss_mask` positions, token count) of layers [k, L) under `iv`,
    from the frozen residual x [B, T, D] entering layer k."""
    xa = D.run_suffix(weights, cfg, x, default_positions(mask), mask, k, iv, remat=remat, attention=attention,
                      unroll=unroll)
    return cross_entropy(weights, cfg, xa, targets, loss_mask, loss_chunk)


def suffix_kl(iv: HookSource | None, weights: Weights, cfg: ModelConfig, k: int, x: jax.Array, mask: jax.Array,
              base: jax.Array | None = None, *, remat: RematPolicy = None, attention: str = "xla",
              loss_chunk: int | None = None, unroll: bool = False) -> tuple[jax.Array, jax.Array]:
    """(summed KL(frozen || intervened) over `mask` positions, token count) from the frozen residual
    x [B, T, D] entering layer k; `base` is the frozen final hidden state (computed from x, without
    the intervention, when None)."""
    pos = default_positions(mask)
    if base is None:  # the same weights with the intervention off
        base = jax.lax.stop_gradient(D.run_layers(weights, cfg, x, pos, mask, k, cfg.n_layers, attention=attention,
                                                  unroll=unroll))
    xa = D.run_suffix(weights, cfg, x, pos, mask, k, iv, remat=remat, attention=attention, unroll=unroll)
    return kl_base_to_adapted(weights, cfg, base, xa, mask, loss_chunk)
