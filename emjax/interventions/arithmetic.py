"""Arithmetic on intervention trees: the metrics' norm, rescaling, orthogonal noise, stacking.

Two norms, for two uses:

* `update_norm`, the norm every metric uses: the size of what the intervention *adds to the model*.
  LoRA: `||scale·BA||_F (effective update)`, the Frobenius norm of `scale * a_l @ b_l` ([in, out]
  per adapted module and layer), summed in squares over all of them. Steering:
  `||alpha·v|| (applied vector)`, the vector added to the residual stream, summed in squares over
  the steered layers. A tree with both parts: the root sum of squares of the two (different units:
  such norms are only comparable to trees of the same make-up). `norm_kind` names the norm.
* `tree_norm`, the L2 norm of the raw trainable leaves (A and B; v), for optimiser-side uses only:
  for LoRA the random initial A dominates it, so it says little about what was learned.

Sources and choices. Efficiency is loss against the size of the change (docs/design.md section 1).
Upstream (docs/upstream.md 5.2, `stability/experiments.py: norm_rescaling_experiment`) measures a LoRA
by the *mean over modules* of `||BA||_F` without the LoRA scale, rescales *each module* to that
target (which equalises modules and so changes the update's direction), and for two rank-1
adapters sets `||B||` instead of `||BA||` (an x-axis off by `||A||`). Ours: the norm of the whole
update as one vector, with the scale (so the LoRA and steering definitions agree: the size of
what is added), and rescaling multiplies every B (and v) by one factor `c / norm`: the update is
linear in B, so its norm becomes `c` exactly and its direction is kept (loss is measured along
the trained ray). A is untouched. Upstream's "scale factors" (B times f) are therefore the same
family of points: `scale_updates(iv, f) == rescale_to_norms(iv, f * update_norm(iv))`.

Orthogonal noise (stability, docs/upstream.md 5.3): `x' = sqrt(1 - eps^2) x + eps y`, y orthogonal to
x with ||y|| = ||x||. Steering: on v (the same as on alpha·v: alpha is a constant factor), exactly
upstream's `apply_orthogonal_perturbation_to_steering_vector`. LoRA, two modes (`LORA_NOISE`):

* "update" (ours, the default): the noise is defined on the update, as the steering noise is on
  the applied vector, so stability and efficiency talk about the same object. Full-space noise on
  every [in, out] matrix is too big to materialise for a 14B rank-32 all-module adapter vmapped over
  E x S versions, so it lives in the adapter's parametrisation: only B moves, `B' = sqrt(1-eps^2) B
  + eps Y`, with Y orthogonal to B in `<X, Y>_G = sum over matrices of tr(X^T G Y)`, `G = a^T a`
  per (module, layer), and scaled so that `||scale·aY||_F = ||scale·aB||_F`. Then
  `dW' = sqrt(1-eps^2) dW + eps dN` exactly, `dN = scale·aY` orthogonal to dW with its norm, so
  `||dW'|| = ||dW||`. Y is drawn as `G^{-1/2} Z`, Z standard normal, which makes dN the projection
  onto the column space of A of an isotropic Gaussian on the full [in, out] update (the noise the
  full-space definition would draw), before the orthogonalisation and rescaling.
  Limitation: the noise lies in the column space of A (R of `in` input directions per matrix);
  input directions outside it are never perturbed.
* "per_matrix" (upstream `stability/utils.py: apply_orthogonal_perturbation`, method "both"): A and
  B of every (module, layer) perturbed independently, each orthogonalised against itself and
  rescaled to its own norm. Each matrix keeps its norm; the update's norm does not (the product
  of two perturbed factors), which is why it is not our default.

Everything here is a pure function of pytrees with no Python branching on traced values, so it
runs under `jax.jit` and `jax.vmap` over stacked trees. Gram matrices and dot products use fp32 at
`Precision.HIGHEST` (GPU fp32 matmuls default to TF32, too coarse for "norm c to fp32 precision").
"""

from __future__ import annotations

import functools
from typing import Callable, Literal

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from emjax.interventions.container import Interventions
from emjax.interventions.lora import LoraAdapter

LORA_NORM = "||scale·BA||_F (effective update)"
STEERING_NORM = "||alpha·v|| (applied vector)"
LoraNoise = Literal["update", "per_matrix"]
LORA_NOISE: tuple[str, ...] = ("update", "per_matrix")

_HI = jax.lax.Precision.HIGHEST


def _f32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Raw-parameter arithmetic (every trainable leaf)


def tree_norm(iv: Interventions) -> jax.Array:
    """L2 norm of all raw trainable leaves as one flat vector (A and B; v without alpha): float32
    scalar. Not the metrics' norm (see `update_norm`)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(_f32(x))) for x in jax.tree.leaves(iv)))


def tree_dot(a: Interventions, b: Interventions) -> jax.Array:
    """Flat dot product of all raw trainable leaves of two trees of one structure (float32 scalar)."""
    return sum(jnp.sum(_f32(x) * _f32(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_scale(iv: Interventions, c) -> Interventions:
    """Every raw leaf times c (for LoRA the update scales by c^2; `scale_update` scales it by c)."""
    return jax.tree.map(lambda x: (x * c).astype(x.dtype), iv)


def random_like(iv: Interventions, key: jax.Array) -> Interventions:
    """A standard-normal tree with the structure of `iv` (every leaf, A included)."""
    leaves, treedef = jax.tree.flatten(iv)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, jnp.float32).astype(x.dtype)
                                        for k, x in zip(keys, leaves)])


def stack_trees(trees: list[Interventions]) -> Interventions:
    """[K] trees of one structure -> one tree whose leaves have a leading K axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


# ---------------------------------------------------------------------------------------------
# The update: norms and dot products without materialising [in, out] matrices


def _update_dot_layers(a1: jax.Array, b1: jax.Array, a2: jax.Array, b2: jax.Array) -> jax.Array:
    """<a1_l @ b1_l, a2_l @ b2_l>_F per layer, [n]: a [n, in, R], b [n, R, out].

    tr(b1^T a1^T a2 b2) = sum((a1^T a2) * (b1 b2^T)) with [R, R] Gram matrices: O(n R^2 (in + out))
    instead of the O(n in out) of the materialised products. (Cancellation makes it lose relative
    precision only when ||a b|| << ||a|| ||b||, far from trained adapters.)
    """
    ga = jnp.einsum("nir,nis->nrs", _f32(a1), _f32(a2), precision=_HI)
    gb = jnp.einsum("nro,nso->nrs", _f32(b1), _f32(b2), precision=_HI)
    return jnp.sum(ga * gb, axis=(1, 2))


def lora_update_sq_norms(lora: LoraAdapter) -> dict[str, jax.Array]:
    """module -> [n_sel] float32: ||scale * a_l @ b_l||_F^2 of each adapted layer."""
    return {m: lora.scale ** 2 * _update_dot_layers(lora.a[m], lora.b[m], lora.a[m], lora.b[m])
            for m in lora.modules}


def update_dot(x: Interventions, y: Interventions) -> jax.Array:
    """<dW_x, dW_y> summed over every adapted matrix plus <alpha_x v_x, alpha_y v_y>: float32 scalar.

    x and y must have the same structure (modules, layers, parts); each uses its own scale / alpha.
    """
    total = jnp.zeros((), jnp.float32)
    if x.lora is not None:
        for m in x.lora.modules:
            total += x.lora.scale * y.lora.scale * jnp.sum(
                _update_dot_layers(x.lora.a[m], x.lora.b[m], y.lora.a[m], y.lora.b[m]))
    if x.steer is not None:
        total += x.steer.alpha * y.steer.alpha * jnp.sum(_f32(x.steer.vectors) * _f32(y.steer.vectors))
    return total


def update_norm(iv: Interventions) -> jax.Array:
    """The metrics' norm (float32 scalar): LoRA ||scale·BA||_F over all modules and layers, steering
    ||alpha·v|| over all steered layers, root sum of squares of both parts (module docstring)."""
    return jnp.sqrt(jnp.maximum(update_dot(iv, iv), 0.0))


def norm_kind(iv: Interventions) -> str:
    """Which norm `update_norm` is for this tree: `LORA_NORM`, `STEERING_NORM`, or both."""
    if iv.lora is not None and iv.steer is not None:
        return f"sqrt({LORA_NORM}^2 + {STEERING_NORM}^2)"
    if iv.lora is not None:
        return LORA_NORM
    if iv.steer is not None:
        return STEERING_NORM
    return "none"


def _map_update(fn: Callable[..., jax.Array], *trees: Interventions) -> Interventions:
    """`fn` leafwise over the leaves the update is linear in (LoRA B, steering v) of `trees` (one
    structure); every other field (A, scale, alpha, layers) comes from trees[0]."""
    t0 = trees[0]
    lora = steer = None
    if t0.lora is not None:
        lora = t0.lora.replace(b={m: fn(*(t.lora.b[m] for t in trees)) for m in t0.lora.b})
    if t0.steer is not None:
        steer = t0.steer.replace(vectors=fn(*(t.steer.vectors for t in trees)))
    return t0.replace(lora=lora, steer=steer)


def scale_update(iv: Interventions, c) -> Interventions:
    """The update times c: every LoRA B and steering v multiplied by c (A untouched)."""
    return _map_update(lambda x: (x * c).astype(x.dtype), iv)


def scale_updates(iv: Interventions, factors) -> Interventions:
    """Stack of `scale_update(iv, f)` for every factor [K] (upstream's LoRA scale factors)."""
    return jax.vmap(lambda c: scale_update(iv, c))(jnp.asarray(factors, jnp.float32))


def rescale_to_norms(iv: Interventions, norms) -> Interventions:
    """Stack of `iv` rescaled to each of `norms` [K] of `update_norm`: leaves get a leading K axis.

    B and v are multiplied by norms / update_norm(iv), so each version's update norm is the target
    to fp32 precision and its direction is the trained one. A zero intervention stays zero.
    (`rescaled_versions(iv, norms).materialise()`.)
    """
    return rescaled_versions(iv, norms).materialise()


# ---------------------------------------------------------------------------------------------
# Orthogonal noise


def column_space_whitener(a: jax.Array) -> jax.Array:
    """[n, R, R] `G^{-1/2}` of `G = a_l^T a_l` (a: [n, in, R]), pseudo-inverse on a rank-deficient G.

    `a_l @ G^{-1/2}` has orthonormal columns spanning col(a_l), so `a G^{-1/2} Z`, Z standard
    normal [R, out], is the projection onto col(a) x R^out of an isotropic Gaussian [in, out].
    """
    g = jnp.einsum("nir,nis->nrs", _f32(a), _f32(a), precision=_HI)
    w, u = jnp.linalg.eigh(g)
    # eigenvalues below rounding level are directions A does not span: no noise there
    tol = jnp.max(w, axis=-1, keepdims=True) * a.shape[-1] * jnp.finfo(jnp.float32).eps
    inv_sqrt = jnp.where(w > tol, jax.lax.rsqrt(jnp.maximum(w, 1e-30)), 0.0)
    return jnp.einsum("nrk,nk,nsk->nrs", u, inv_sqrt, u, precision=_HI)


def _update_noise(x: Interventions, key: jax.Array) -> Interventions:
    """Mode "update": a float32 tree with x's A whose update dN is orthogonal to dW and as long."""
    leaves = ([("b", m) for m in x.lora.modules] if x.lora is not None else []) + \
             ([("v", None)] if x.steer is not None else [])
    # one key per noise leaf, split as `random_like` did: a steering-only tree draws what it drew
    keys = dict(zip(leaves, jax.random.split(key, len(leaves))))
    lora = steer = None
    if x.lora is not None:
        lora = x.lora.replace(b={m: jnp.einsum("nrs,nso->nro", column_space_whitener(x.lora.a[m]),
                                               jax.random.normal(keys["b", m], b.shape, jnp.float32),
                                               precision=_HI)
                                 for m, b in x.lora.b.items()})
    if x.steer is not None:
        steer = x.steer.replace(vectors=jax.random.normal(keys["v", None], x.steer.vectors.shape, jnp.float32))
    z = x.replace(lora=lora, steer=steer)
    xx = update_dot(x, x)
    # Gram-Schmidt in the update's inner product: B enters linearly and A is shared, so removing
    # coef * B from Y removes coef * dW from dN
    coef = jnp.where(xx > 0, update_dot(z, x) / jnp.maximum(xx, 1e-30), 0.0)
    y = _map_update(lambda zi, xi: zi - coef * _f32(xi), z, x)
    factor = jnp.sqrt(xx) / jnp.maximum(update_norm(y), 1e-30)
    return _map_update(lambda yi: yi * factor, y)


def _per_matrix(x: jax.Array, y: jax.Array) -> jax.Array:
    """y [n, p, q] orthogonalised against x per matrix (flattened) and rescaled to ||x_l||."""
    x = _f32(x)
    xx = jnp.sum(x * x, axis=(1, 2), keepdims=True)
    y = y - jnp.where(xx > 0, jnp.sum(x * y, axis=(1, 2), keepdims=True) / jnp.maximum(xx, 1e-30), 0.0) * x
    return y * jnp.sqrt(xx) / jnp.maximum(jnp.sqrt(jnp.sum(y * y, axis=(1, 2), keepdims=True)), 1e-30)


def orthogonal_noise(x: Interventions, key: jax.Array, lora_noise: LoraNoise = "update") -> Interventions:
    """The noise y of `perturb(x, eps, key, lora_noise)` as a float32 tree of x's structure.

    "update": y has x's A and a noise Y in place of B (v: noise), so y is itself an intervention
    whose update is the noise: `update_dot(x, y) = 0`, `update_norm(y) = update_norm(x)`.
    "per_matrix": y holds noise for A and for B, each orthogonal to its own matrix per (module,
    layer) and of its norm; a steering part gets the "update" noise (the same on v).
    """
    if lora_noise not in LORA_NOISE:
        raise ValueError(f"lora_noise must be one of {LORA_NOISE}, got {lora_noise!r}")
    if lora_noise == "update" or x.lora is None:
        return _update_noise(x, key)
    k_lora, k_steer = jax.random.split(key)
    mods = x.lora.modules
    ka = dict(zip(mods, jax.random.split(jax.random.fold_in(k_lora, 0), len(mods))))
    kb = dict(zip(mods, jax.random.split(jax.random.fold_in(k_lora, 1), len(mods))))
    lora = x.lora.replace(
        a={m: _per_matrix(a, jax.random.normal(ka[m], a.shape, jnp.float32)) for m, a in x.lora.a.items()},
        b={m: _per_matrix(b, jax.random.normal(kb[m], b.shape, jnp.float32)) for m, b in x.lora.b.items()})
    steer = _update_noise(Interventions(steer=x.steer), k_steer).steer if x.steer is not None else None
    return x.replace(lora=lora, steer=steer)


def perturb(x: Interventions, eps: jax.Array, key: jax.Array, lora_noise: LoraNoise = "update"
            ) -> Interventions:
    """x' = sqrt(1 - eps^2) x + eps y with y = `orthogonal_noise(x, key, lora_noise)`.

    "update": only B and v move, `dW' = sqrt(1-eps^2) dW + eps dN`, so `update_norm(x') =
    update_norm(x)`. "per_matrix": A and B move, each matrix keeps its own norm.
    """
    y = orthogonal_noise(x, key, lora_noise)
    c = jnp.sqrt(1.0 - eps ** 2)

    def mix(a, b):
        return (c * _f32(a) + eps * b).astype(a.dtype)
    if lora_noise == "update":
        return _map_update(mix, x, y)
    return jax.tree.map(mix, x, y)


def perturbation_grid(x: Interventions, eps, seeds, lora_noise: LoraNoise = "update"
                      ) -> tuple[Interventions, np.ndarray, np.ndarray]:
    """Stack of perturb(x, e, PRNGKey(s), lora_noise) for every (eps e, seed s): E * S versions,
    eps-major, with their labels ([E*S] eps, [E*S] seeds). (`perturbed_versions(...)`
    materialised.)"""
    versions, ee, ss = perturbed_versions(x, eps, seeds, lora_noise)
    return versions.materialise(), ee, ss


# ---------------------------------------------------------------------------------------------
# Versions built on demand


@flax.struct.dataclass
class Versions:
    """K versions of one intervention, each built from its row of `params` when needed.

    A sweep over `Versions` builds each chunk of versions inside the compiled loop, so it never
    holds all K at once: a 14B rank-32 all-module adapter is about 0.55 GB of float32 A and B, and
    120 noise versions of it stacked would be 66 GB before any activation.

    Attributes:
      base: the intervention the versions derive from (no leading axis).
      params: name -> [K, ...]: "factor" [K] for build "scale"; "eps" [K] and "key" [K, 2] for
        build "perturb".
      build: "scale" (`scale_update(base, factor)`) or "perturb" (`perturb(base, eps, key,
        lora_noise)`).
      lora_noise: the LoRA noise mode of build "perturb" (`LORA_NOISE`).
    """

    base: Interventions
    params: dict[str, jax.Array]
    build: str = flax.struct.field(pytree_node=False)
    lora_noise: str = flax.struct.field(pytree_node=False, default="update")

    def __len__(self) -> int:
        return int(jax.tree.leaves(self.params)[0].shape[0])

    def make(self, p: dict[str, jax.Array]) -> Interventions:
        """The version of one row `p` of `params` (traceable: vmap / lax.map over the rows)."""
        if self.build == "scale":
            return scale_update(self.base, p["factor"])
        return perturb(self.base, p["eps"], p["key"], self.lora_noise)

    def materialise(self) -> Interventions:
        """All K versions stacked on a leading axis."""
        return jax.vmap(self.make)(self.params)

    def version(self, i: int) -> Interventions:
        return self.make(jax.tree.map(lambda x: x[i], self.params))


def scaled_versions(iv: Interventions, factors) -> Versions:
    """`scale_update(iv, f)` for every factor [K], built on demand."""
    return Versions(base=iv, params={"factor": jnp.asarray(factors, jnp.float32)}, build="scale")


def rescaled_versions(iv: Interventions, norms) -> Versions:
    """`iv` rescaled to each update norm of `norms` [K] (see `rescale_to_norms`), built on demand."""
    norms = jnp.asarray(norms, jnp.float32)
    n = update_norm(iv)
    return scaled_versions(iv, jnp.where(n > 0, norms / jnp.maximum(n, 1e-30), 0.0))


def perturbed_versions(x: Interventions, eps, seeds, lora_noise: LoraNoise = "update"
                       ) -> tuple[Versions, np.ndarray, np.ndarray]:
    """perturb(x, e, PRNGKey(s), lora_noise) for every (eps e, seed s), eps-major, built on
    demand, with their labels ([E*S] eps, [E*S] seeds)."""
    if lora_noise not in LORA_NOISE:
        raise ValueError(f"lora_noise must be one of {LORA_NOISE}, got {lora_noise!r}")
    eps = np.asarray(eps, np.float32)
    seeds = np.asarray(seeds, np.int64)
    ee, ss = np.meshgrid(eps, seeds, indexing="ij")
    ee, ss = ee.ravel(), ss.ravel()
    keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(ss, jnp.uint32))
    return Versions(base=x, params={"eps": jnp.asarray(ee), "key": keys}, build="perturb",
                    lora_noise=lora_noise), ee, ss


def version_norms(versions: Versions, chunk: int | None = None) -> np.ndarray:
    """[K] `update_norm` of every version as built, `chunk` versions at a time (None: all)."""
    in_batch = chunk is None or chunk >= len(versions)
    return np.asarray(_version_norms(versions, chunk=None if in_batch else chunk))


@functools.partial(jax.jit, static_argnames=("chunk",))
def _version_norms(versions: Versions, chunk: int | None) -> jax.Array:
    def one(p):
        return update_norm(versions.make(p))
    if chunk is None:
        return jax.vmap(one)(versions.params)
    return jax.lax.map(one, versions.params, batch_size=chunk)
