"""Arithmetic on intervention trees: norms, dot products, rescaling, orthogonal noise, stacking.

The norm of an intervention is the L2 norm of *all its trainable leaves flattened into one
vector*: for a steering vector the raw vector `v` (alpha not included; the applied vector is
`alpha * v`), for LoRA the concatenation of every A and B matrix (the LoRA scale not included).
"Rescale to norm n" multiplies every leaf by n / norm, so for LoRA the weight delta B A scales by
(n / norm)^2; upstream's LoRA "scale factors" instead multiply B alone, scaling the delta
linearly (`scale_lora_delta`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from emjax.interventions.container import Interventions


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
