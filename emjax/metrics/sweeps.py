"""The paper's three inductive-bias metrics as vmapped sweeps, compiled once per shape.

A sweep evaluates one loss for many versions of an intervention (rescaled to K norms, perturbed
by E x S noise draws, or random directions): the versions are stacked on a leading axis and the
loss is `jax.vmap`ped over it. The frozen layers below the intervention run once for the whole
sweep (prefix sharing), only the suffix runs per version, and `jax.lax.map(..., batch_size=c)`
bounds memory by evaluating c versions at a time. Passed as `arithmetic.Versions` (one base
intervention and K rows of parameters: scale factors, or noise eps and keys), each chunk's
versions are built inside the compiled loop, so a chunked sweep over a large LoRA never holds all
K versions. On a mesh (`place_sweep`) the stacked axis goes on `data` when it divides, otherwise
the rows of the batch do, and XLA splits the sweep across devices.

The norm convention and the versions themselves (rescaled, perturbed, random) come from
`emjax.interventions.arithmetic`: every norm is `update_norm`, the size of what the intervention
adds (LoRA `||scale·BA||_F`, steering `||alpha·v||`).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from emjax.interventions.arithmetic import Versions
from emjax.interventions.container import Interventions
from emjax.model import decoder as D
from emjax.model.ablation import DirectionAblation, ablated
from emjax.model.config import ModelConfig
from emjax.model.layers import CUBLAS_GEMMS
from emjax.model.mesh_plan import global_array, put_rows, replicate
from emjax.model.schema import Weights
from emjax.model.sharding import DEFAULT_RULES, Rule, sweep_sharding
from emjax.train import shared_prefix


# ---------------------------------------------------------------------------------------------
# Vmapped evaluation


# Once per sweep: the prefix entering layer k and (for KL) the frozen final hidden state.
frozen_pass = jax.jit(shared_prefix.frozen_pass, static_argnames=("cfg", "k", "with_base", "attention"),
                      compiler_options=CUBLAS_GEMMS)


def _loss_one(iv: Interventions, weights: Weights, cfg: ModelConfig, k: int, metric: str, x: jax.Array,
              mask: jax.Array, targets: jax.Array | None, loss_mask: jax.Array | None,
              base: jax.Array | None, loss_chunk: int | None, attention: str,
              ablation: DirectionAblation | None) -> jax.Array:
    iv = ablated(iv, ablation)
    if metric == "ce":
        s, n = shared_prefix.suffix_ce(iv, weights, cfg, k, x, mask, targets, loss_mask, attention=attention,
                                       loss_chunk=loss_chunk)
    else:
        s, n = shared_prefix.suffix_kl(iv, weights, cfg, k, x, mask, base, attention=attention,
                                       loss_chunk=loss_chunk)
    return s / jnp.maximum(n, 1.0)


@functools.partial(jax.jit, static_argnames=("cfg", "k", "metric", "chunk", "loss_chunk", "in_batch",
                                             "attention"), compiler_options=CUBLAS_GEMMS)
def _sweep(stacked, weights, x, mask, targets, loss_mask, base, ablation, *, cfg, k, metric, chunk, loss_chunk,
           in_batch, attention):
    loss = functools.partial(_loss_one, weights=weights, cfg=cfg, k=k, metric=metric, x=x, mask=mask,
                             targets=targets, loss_mask=loss_mask, base=base, loss_chunk=loss_chunk,
                             attention=attention, ablation=ablation)
    if isinstance(stacked, Versions):  # build each chunk's versions inside the loop
        xs, one = stacked.params, lambda p: loss(stacked.make(p))
    else:
        xs, one = stacked, loss
    if in_batch:  # small sweeps: one vmap over the whole stack
        return jax.vmap(one)(xs)
    return jax.lax.map(one, xs, batch_size=chunk)


def num_versions(stacked: Interventions | Versions) -> int:
    """K, the number of versions of a stacked tree or of `Versions`."""
    return len(stacked) if isinstance(stacked, Versions) else int(jax.tree.leaves(stacked)[0].shape[0])


def _template(stacked: Interventions | Versions) -> Interventions:
    """A tree with the versions' static structure (layers, modules) for `shared_prefix_layers`."""
    return stacked.base if isinstance(stacked, Versions) else stacked


def sweep_losses(stacked: Interventions | Versions, weights: Weights, cfg: ModelConfig, tokens: jax.Array,
                 mask: jax.Array, *, metric: str = "ce", targets: jax.Array | None = None,
                 loss_mask: jax.Array | None = None, chunk: int | None = None,
                 loss_chunk: int | None = None, first_layer: int | None = None,
                 attention: str = "xla", ablation: DirectionAblation | None = None) -> jax.Array:
    """Mean loss of every stacked version of an intervention on one batch: [K] float32.

    stacked: an `Interventions` whose leaves carry a leading K axis, or `Versions` (built chunk by
    chunk inside the compiled loop, so the K versions are never all in memory unless chunk=None).

    metric "ce": token-mean cross-entropy on `loss_mask` positions predicting `targets`;
    metric "kl": token-mean KL(frozen || intervened) over `mask` positions.
    chunk: versions evaluated at once (None: all K in one vmap).
    first_layer: where the frozen prefix ends (default: `shared_prefix_layers`).
    attention: "xla" or "cudnn" (right-padded rows only; see emjax.model.decoder.run_layers).
    ablation: directions projected out of the residual stream of every version's model
      (`emjax.model.ablation`); the KL reference stays the frozen model without ablation.
    """
    if metric not in ("ce", "kl"):
        raise ValueError(f"metric must be 'ce' or 'kl', got {metric!r}")
    k = ablated(_template(stacked), ablation).shared_prefix_layers(cfg) if first_layer is None else first_layer
    if ablation is not None and ablation.layers and k > ablation.layers[0]:
        raise ValueError(f"first_layer {k} skips the ablation at layer {ablation.layers[0]}")
    x, base = frozen_pass(weights, cfg, tokens, mask, k, metric == "kl", attention)
    n = num_versions(stacked)
    in_batch = chunk is None or chunk >= n
    return _sweep(stacked, weights, x, mask, targets, loss_mask, base, ablation, cfg=cfg, k=k, metric=metric,
                  chunk=None if in_batch else chunk, loss_chunk=loss_chunk, in_batch=in_batch,
                  attention=attention)


def loop_losses(stacked: Interventions | Versions, weights: Weights, cfg: ModelConfig, tokens, mask, *,
                metric: str = "ce", targets=None, loss_mask=None,
                ablation: DirectionAblation | None = None) -> np.ndarray:
    """The same numbers by a plain Python loop of full forward passes (reference and baseline)."""
    out = []
    fwd = jax.jit(lambda iv: D.forward(weights, cfg, tokens, mask, interventions=ablated(iv, ablation)))
    base = D.forward(weights, cfg, tokens, mask) if metric == "kl" else None
    for i in range(num_versions(stacked)):
        version = stacked.version(i) if isinstance(stacked, Versions) else jax.tree.map(lambda a: a[i], stacked)
        logits = fwd(version)
        if metric == "ce":
            logz = jax.nn.logsumexp(logits, -1)
            tgt = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
            m = loss_mask.astype(jnp.float32)
            out.append(float(jnp.sum((logz - tgt) * m) / jnp.sum(m)))
        else:
            lb, la = jax.nn.log_softmax(base, -1), jax.nn.log_softmax(logits, -1)
            kl = jnp.sum(jnp.exp(lb) * (lb - la), -1)
            m = mask.astype(jnp.float32)
            out.append(float(jnp.sum(kl * m) / jnp.sum(m)))
    return np.asarray(out)


def shard_sweep_axis(stacked: Interventions | Versions, mesh: Mesh, axis: str = "data"
                     ) -> Interventions | Versions:
    """Places the leading (sweep) axis of every leaf on `axis` of `mesh` (the "sweep" rule of
    `emjax.model.sharding`: replicated where the axis does not divide the sweep); for `Versions`,
    of every row of `params` (the base replicated)."""
    rules = {**DEFAULT_RULES, "sweep": Rule(axis, replicate_if_indivisible=True)}
    def put(tree):
        return jax.tree.map(lambda x: global_array(np.asarray(x), sweep_sharding(mesh, x.shape, rules)), tree)
    if isinstance(stacked, Versions):
        return stacked.replace(base=replicate(stacked.base, mesh), params=put(stacked.params))
    return put(stacked)


def place_sweep(stacked: Interventions | Versions, rows: dict, mesh: Mesh | None
                ) -> tuple[Interventions | Versions, dict, Mesh | None]:
    """The versions and one batch of rows (a dict of host arrays [B, ...]) on `mesh`: the sweep axis
    on `data` when `data` divides it, otherwise the rows split over `data` (where they divide;
    replicated where not); device arrays without a mesh. The third value is the mesh to trace
    under (`mesh_plan.mesh_context`): `mesh` when the rows are split, so the activations get their
    row constraints, else None (a row constraint inside the vmap would replicate the sweep axis)."""
    if mesh is None:
        return stacked, {k: jnp.asarray(v) for k, v in rows.items()}, None
    if num_versions(stacked) % mesh.shape["data"] == 0:
        return shard_sweep_axis(stacked, mesh), replicate(rows, mesh), None
    return replicate(stacked, mesh), put_rows(rows, mesh), mesh


def batched_rows(fn: Callable[[dict], jax.Array], batches: list[dict], metric: str = "ce") -> jax.Array:
    """Token mean over several row batches of per-batch `sweep_losses` results of `metric`: each
    batch weighs as many tokens as its own mean is over (`loss_mask` for "ce", `mask` for "kl")."""
    total = weight = 0.0
    for b in batches:
        w = float(np.sum(b["loss_mask"] if metric == "ce" else b["mask"]))
        total = total + fn(b) * w
        weight += w
    return total / max(weight, 1.0)
