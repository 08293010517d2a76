"""The paper's three inductive-bias metrics as vmapped sweeps, compiled once per shape.

A sweep evaluates one loss for many versions of an intervention (rescaled to K norms, perturbed
by E x S noise draws, or random directions): the versions are stacked on a leading axis and the
loss is `jax.vmap`ped over it. The frozen layers below the intervention run once for the whole
sweep (prefix sharing), only the suffix runs per version, and `jax.lax.map(..., batch_size=c)`
bounds memory by evaluating c versions at a time. Put the stacked axis on a mesh axis (see
`shard_sweep_axis`) and XLA splits the sweep across devices.

Norm convention (used everywhere here and in the outputs):
  * the norm of an intervention is the L2 norm of *all its trainable leaves flattened into one
    vector*: for a steering vector the raw vector `v` (alpha not included; the applied vector is
    `alpha * v`, reported separately as `applied_norm`), for LoRA the concatenation of every A
    and B matrix (the LoRA scale not included);
  * "rescale to norm n" multiplies every leaf by n / norm, so for LoRA the weight delta B A
    scales by (n / norm)^2; upstream's LoRA "scale factors" instead multiply B alone, scaling
    the delta linearly (`scale_lora_delta`).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from emjax import model as M
from emjax.config import ModelConfig
from emjax.interventions import Interventions, shared_prefix_layers
from emjax.losses import cross_entropy, kl_base_to_adapted
from emjax.params import Weights


# ---------------------------------------------------------------------------------------------
# Tree arithmetic on interventions


def tree_norm(iv: Interventions) -> jax.Array:
    """L2 norm of all trainable leaves as one flat vector (float32 scalar)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(iv)))


def tree_dot(a: Interventions, b: Interventions) -> jax.Array:
    return sum(jnp.sum(x.astype(jnp.float32) * y.astype(jnp.float32))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_scale(iv: Interventions, c) -> Interventions:
    return jax.tree.map(lambda x: (x * c).astype(x.dtype), iv)


def rescale_to_norms(iv: Interventions, norms) -> Interventions:
    """Stack of `iv` rescaled to each of `norms` [K]: leaves get a leading K axis."""
    norms = jnp.asarray(norms, jnp.float32)
    n = tree_norm(iv)
    factor = jnp.where(n > 0, norms / jnp.maximum(n, 1e-30), 0.0)
    return jax.vmap(lambda c: tree_scale(iv, c))(factor)


def scale_lora_delta(iv: Interventions, factors) -> Interventions:
    """Stack of `iv` with every LoRA B multiplied by each factor [K] (delta scales linearly)."""
    factors = jnp.asarray(factors, jnp.float32)
    def one(c):
        return iv.replace(lora=iv.lora.replace(b={m: b * c for m, b in iv.lora.b.items()}))
    return jax.vmap(one)(factors)


def random_like(iv: Interventions, key: jax.Array) -> Interventions:
    """A standard-normal tree with the structure of `iv`."""
    leaves, treedef = jax.tree.flatten(iv)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, jnp.float32).astype(x.dtype)
                                        for k, x in zip(keys, leaves)])


def orthogonal_noise(x: Interventions, key: jax.Array) -> Interventions:
    """Gaussian y, orthogonalised against x over the whole flattened tree, scaled to ||x||."""
    y = random_like(x, key)
    xx = tree_dot(x, x)
    coef = jnp.where(xx > 0, tree_dot(y, x) / jnp.maximum(xx, 1e-30), 0.0)
    y = jax.tree.map(lambda a, b: a - coef * b, y, x)
    return tree_scale(y, tree_norm(x) / jnp.maximum(tree_norm(y), 1e-30))


def perturb(x: Interventions, eps: jax.Array, key: jax.Array) -> Interventions:
    """x' = sqrt(1 - eps^2) x + eps y, y orthogonal noise of norm ||x||: ||x'|| = ||x||."""
    y = orthogonal_noise(x, key)
    return jax.tree.map(lambda a, b: jnp.sqrt(1.0 - eps ** 2) * a + eps * b, x, y)


def perturbation_grid(x: Interventions, eps, seeds) -> tuple[Interventions, np.ndarray, np.ndarray]:
    """Stack of perturb(x, e, s) for every (eps e, seed s): E * S versions, with their labels."""
    eps = np.asarray(eps, np.float32)
    seeds = np.asarray(seeds, np.int64)
    ee, ss = np.meshgrid(eps, seeds, indexing="ij")
    ee, ss = ee.ravel(), ss.ravel()
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(ss, jnp.uint32))
    return jax.vmap(lambda e, k: perturb(x, e, k))(jnp.asarray(ee), keys), ee, ss


def stack_trees(trees: list[Interventions]) -> Interventions:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


# ---------------------------------------------------------------------------------------------
# Vmapped evaluation


@functools.partial(jax.jit, static_argnames=("cfg", "k", "with_base", "attention"), compiler_options=M.CUBLAS_GEMMS)
def frozen_pass(weights: Weights, cfg: ModelConfig, tokens: jax.Array, mask: jax.Array, k: int,
                with_base: bool, attention: str = "xla"):
    """Once per sweep: the prefix entering layer k and (for KL) the frozen final hidden state."""
    pos = M.default_positions(mask)
    x = M.run_layers(weights, cfg, M.embed(weights, cfg, tokens), pos, mask, 0, k, attention=attention)
    base = M.run_layers(weights, cfg, x, pos, mask, k, cfg.n_layers, attention=attention) if with_base else None
    return x, base


def _loss_one(iv: Interventions, weights: Weights, cfg: ModelConfig, k: int, metric: str, x: jax.Array,
              mask: jax.Array, targets: jax.Array | None, loss_mask: jax.Array | None,
              base: jax.Array | None, loss_chunk: int | None, attention: str) -> jax.Array:
    xa = M.run_suffix(weights, cfg, x, M.default_positions(mask), mask, k, iv, attention=attention)
    if metric == "ce":
        s, n = cross_entropy(weights, cfg, xa, targets, loss_mask, loss_chunk)
    else:
        s, n = kl_base_to_adapted(weights, cfg, base, xa, mask, loss_chunk)
    return s / jnp.maximum(n, 1.0)


@functools.partial(jax.jit, static_argnames=("cfg", "k", "metric", "chunk", "loss_chunk", "in_batch",
                                             "attention"), compiler_options=M.CUBLAS_GEMMS)
def _sweep(stacked, weights, x, mask, targets, loss_mask, base, *, cfg, k, metric, chunk, loss_chunk,
           in_batch, attention):
    one = functools.partial(_loss_one, weights=weights, cfg=cfg, k=k, metric=metric, x=x, mask=mask,
                            targets=targets, loss_mask=loss_mask, base=base, loss_chunk=loss_chunk,
                            attention=attention)
    if in_batch:  # small sweeps: one vmap over the whole stack
        return jax.vmap(one)(stacked)
    return jax.lax.map(one, stacked, batch_size=chunk)


def sweep_losses(stacked: Interventions, weights: Weights, cfg: ModelConfig, tokens: jax.Array,
                 mask: jax.Array, *, metric: str = "ce", targets: jax.Array | None = None,
                 loss_mask: jax.Array | None = None, chunk: int | None = None,
                 loss_chunk: int | None = None, first_layer: int | None = None,
                 attention: str = "xla") -> jax.Array:
    """Mean loss of every stacked version of an intervention on one batch: [K] float32.

    metric "ce": token-mean cross-entropy on `loss_mask` positions predicting `targets`;
    metric "kl": token-mean KL(frozen || intervened) over `mask` positions.
    chunk: versions evaluated at once (None: all K in one vmap).
    first_layer: where the frozen prefix ends (default: `shared_prefix_layers`).
    attention: "xla" or "cudnn" (right-padded rows only; see emjax.model.run_layers).
    """
    if metric not in ("ce", "kl"):
        raise ValueError(f"metric must be 'ce' or 'kl', got {metric!r}")
    k = shared_prefix_layers(stacked, cfg) if first_layer is None else first_layer
    x, base = frozen_pass(weights, cfg, tokens, mask, k, metric == "kl", attention)
    n = jax.tree.leaves(stacked)[0].shape[0]
    in_batch = chunk is None or chunk >= n
    return _sweep(stacked, weights, x, mask, targets, loss_mask, base, cfg=cfg, k=k, metric=metric,
                  chunk=None if in_batch else chunk, loss_chunk=loss_chunk, in_batch=in_batch,
                  attention=attention)


def loop_losses(stacked: Interventions, weights: Weights, cfg: ModelConfig, tokens, mask, *,
                metric: str = "ce", targets=None, loss_mask=None) -> np.ndarray:
    """The same numbers by a plain Python loop of full forward passes (reference and baseline)."""
    n = jax.tree.leaves(stacked)[0].shape[0]
    out = []
    fwd = jax.jit(lambda iv: M.forward(weights, cfg, tokens, mask, interventions=iv))
    base = M.forward(weights, cfg, tokens, mask) if metric == "kl" else None
    for i in range(n):
        logits = fwd(jax.tree.map(lambda a: a[i], stacked))
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


def shard_sweep_axis(stacked: Interventions, mesh: Mesh, axis: str = "data") -> Interventions:
    """Places the leading (sweep) axis of every leaf on `axis` of `mesh` (replicated elsewhere)."""
    def put(x):
        spec = P(axis, *([None] * (x.ndim - 1))) if x.shape[0] % mesh.shape[axis] == 0 else P()
        return jax.device_put(x, NamedSharding(mesh, spec))
    return jax.tree.map(put, stacked)


def batched_rows(fn: Callable[[dict], jax.Array], batches: list[dict]) -> jax.Array:
    """Token-weighted mean of per-batch sweep results over several row batches."""
    total = weight = 0.0
    for b in batches:
        w = float(np.sum(b["loss_mask"] if "loss_mask" in b else b["mask"]))
        total = total + fn(b) * w
        weight += w
    return total / max(weight, 1.0)
