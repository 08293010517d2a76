"""Inner products and cosines between interventions, on what they add to the model.

A steering vector's effect is the applied vector alpha * v at its layers; a LoRA adapter's is its
effective update scale * A B per (layer, module). Two interventions are compared on those: the
cosine of two steering vectors is the cosine of alpha1 v1 and alpha2 v2 over their common layers;
of two LoRA adapters, the Frobenius inner product of their updates summed over common
(layer, module) pairs, computed from R x R Gram products without forming any [in, out] matrix:

    <s1 A1 B1, s2 A2 B2>_F = s1 s2 * sum((A1^T A2) * (B1 B2^T)).

Layers or modules only one side has contribute to its norm but not to the inner product, so a
cosine of 1 means "the same update", not "the same update where both act".
"""

from __future__ import annotations

import jax.numpy as jnp

from emjax.errors import EmjaxError
from emjax.interventions.arithmetic import update_norm
from emjax.interventions.container import Interventions


class IncomparableError(EmjaxError, ValueError):
    """Two interventions of different kinds (a LoRA and a steering vector) cannot be compared."""


def _steer_rows(iv: Interventions) -> dict[tuple[int, str], jnp.ndarray]:
    s = iv.steer
    return {(l, s.hook): s.vectors[i].astype(jnp.float32) * s.alpha for i, l in enumerate(s.layers)}


def _lora_rows(iv: Interventions) -> dict[tuple[int, str], tuple[jnp.ndarray, jnp.ndarray]]:
    lo = iv.lora
    return {(l, m): (lo.a[m][i].astype(jnp.float32), lo.b[m][i].astype(jnp.float32) * lo.scale)
            for m in lo.modules for i, l in enumerate(lo.layers)}


def effect_dot(x: Interventions, y: Interventions) -> jnp.ndarray:
    """<effect(x), effect(y)> summed over common sites (float32 scalar)."""
    if x.steer is not None and y.steer is not None and x.lora is None and y.lora is None:
        a, b = _steer_rows(x), _steer_rows(y)
        return sum((jnp.dot(a[k], b[k]) for k in a.keys() & b.keys()), jnp.float32(0.0))
    if x.lora is not None and y.lora is not None and x.steer is None and y.steer is None:
        a, b = _lora_rows(x), _lora_rows(y)
        total = jnp.float32(0.0)
        for k in a.keys() & b.keys():
            (a1, b1), (a2, b2) = a[k], b[k]
            total = total + jnp.sum((a1.T @ a2) * (b1 @ b2.T))
        return total
    raise IncomparableError("only two steering vectors or two LoRA adapters can be compared")


def effect_norm(x: Interventions) -> jnp.ndarray:
    """||effect(x)||: the applied vector's norm, or the Frobenius norm of the effective update
    (`emjax.interventions.arithmetic.update_norm`, the metrics' norm)."""
    return update_norm(x)


def effect_cosine(x: Interventions, y: Interventions) -> jnp.ndarray:
    """cos(effect(x), effect(y)); 0 where either is zero (an untrained vector has no direction)."""
    nx, ny = effect_norm(x), effect_norm(y)
    return jnp.where((nx > 0) & (ny > 0), effect_dot(x, y) / jnp.maximum(nx * ny, 1e-30), 0.0)


def effect_projection(x: Interventions, ref: Interventions) -> jnp.ndarray:
    """<effect(x), effect(ref)> / ||effect(ref)||: the length of x's effect along ref's direction
    (in the metrics' norm units); 0 for a zero reference."""
    nr = effect_norm(ref)
    return jnp.where(nr > 0, effect_dot(x, ref) / jnp.maximum(nr, 1e-30), 0.0)
