"""The gradient analysis: which way the SFT loss pulls a steering vector, at equal norms.

The paper argues that the optimiser finds the general solution because the loss falls faster
along it. Here, for a steering vector v at layer l (the residual stream after block l), the
gradient g = dL/dv of the token-mean SFT loss on training rows is the sum over positions of the
loss's gradient with respect to that residual stream. It is evaluated at v = 0 and at
v = s * u_d for each named unit direction u_d (e.g. the trained general and narrow vectors) and
each norm s, and projected on every direction:

    descent_<e> = -g . u_e     the rate at which the loss falls when v moves along u_e (per unit
                               of norm); larger means the loss prefers that direction
    cos_<e>     = cos(-g, u_e)

Norms are of the applied vector (alpha·v, `emjax.interventions.arithmetic.update_norm`).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from emjax.checkpoints.load import LoadedModel
from emjax.interventions import Interventions
from emjax.interventions.steering import SteeringVectors
from emjax.model.config import ModelConfig
from emjax.model.hooks import residual_sites
from emjax.train.shared_prefix import frozen_pass, suffix_ce


@functools.partial(jax.jit, static_argnames=("cfg", "layer", "hook", "k"))
def _loss_and_grad(v: jax.Array, weights, x, mask, targets, loss_mask, *, cfg: ModelConfig, layer: int,
                   hook: str, k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(summed CE, token count, d summed CE / d v [D]) of one batch from the frozen prefix x."""
    def summed(v):
        iv = Interventions(steer=SteeringVectors(vectors=v[None], layers=(layer,), alpha=1.0, hook=hook))
        s, n = suffix_ce(iv, weights, cfg, k, x, mask, targets, loss_mask)
        return s, n
    (s, n), g = jax.value_and_grad(summed, has_aux=True)(v)
    return s, n, g


def frozen_prefixes(model: LoadedModel, batches: Sequence[dict], layer: int, hook: str = "mlp_out"
                    ) -> tuple[int, list[jax.Array]]:
    """(k, the frozen residual stream entering layer k for every batch): computed once, shared by
    every point of the analysis, since the vector sits above it."""
    k = layer + 1 if hook in residual_sites(model.cfg) else layer  # the frozen prefix ends at the vector
    return k, [frozen_pass(model.weights, model.cfg, jnp.asarray(b["tokens"]), jnp.asarray(b["mask"]), k, False)[0]
               for b in batches]


def loss_and_gradient(model: LoadedModel, batches: Sequence[dict], v: np.ndarray, layer: int,
                      hook: str = "mlp_out", prefixes: tuple[int, list[jax.Array]] | None = None
                      ) -> tuple[float, np.ndarray]:
    """(token-mean SFT loss, its gradient [D] with respect to the applied vector v at `layer`)
    over right-padded `batches` (`emjax.data.tokenize.pad_batch` dicts); `prefixes` from
    `frozen_prefixes` (computed here when None)."""
    cfg = model.cfg
    k, xs = prefixes or frozen_prefixes(model, batches, layer, hook)
    total_s, total_n, total_g = 0.0, 0.0, np.zeros(cfg.d_model, np.float64)
    v = jnp.asarray(v, jnp.float32)
    for b, x in zip(batches, xs):
        s, n, g = _loss_and_grad(v, model.weights, x, jnp.asarray(b["mask"]), jnp.asarray(b["targets"]),
                                 jnp.asarray(b["loss_mask"]), cfg=cfg, layer=layer, hook=hook, k=k)
        total_s += float(s)
        total_n += float(n)
        total_g += np.asarray(g, np.float64)
    n = max(total_n, 1.0)
    return total_s / n, total_g / n


def gradient_projections(model: LoadedModel, batches: Sequence[dict], layer: int, directions: dict[str, np.ndarray],
                         norms: Sequence[float], hook: str = "mlp_out") -> pd.DataFrame:
    """One row per (along, norm): v = 0 ("base") and v = norm * u_along for every direction.

    directions: label -> [D] vectors at `layer` (normalised here)."""
    units = {}
    for label, d in directions.items():
        d = np.asarray(d, np.float64)
        if not np.linalg.norm(d) > 0:
            raise ValueError(f"direction {label!r} is zero at layer {layer}")
        units[label] = d / np.linalg.norm(d)
    points = [("base", 0.0, np.zeros(model.cfg.d_model))]
    points += [(label, float(s), s * u) for label, u in units.items() for s in norms]
    rows = []
    prefixes = frozen_prefixes(model, batches, layer, hook)
    for along, s, v in tqdm(points, desc="gradient", unit="point"):
        loss, g = loss_and_gradient(model, batches, v, layer, hook, prefixes)
        gn = float(np.linalg.norm(g))
        row = {"along": along, "norm": s, "layer": layer, "loss": loss, "grad_norm": gn}
        for label, u in units.items():
            row[f"descent_{label}"] = float(-g @ u)
            row[f"cos_{label}"] = float(-g @ u / gn) if gn > 0 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame) -> str:
    labels = [c[len("descent_"):] for c in df.columns if c.startswith("descent_")]
    head = "| along | norm | loss | ‖g‖ | " + " | ".join(f"-g·u_{l}" for l in labels) + " |"
    lines = [head, "|---" * (4 + len(labels)) + "|"]
    for r in df.itertuples():
        lines.append(f"| {r.along} | {r.norm:.3g} | {r.loss:.4f} | {r.grad_norm:.4g} | "
                     + " | ".join(f"{getattr(r, 'descent_' + l):+.4g}" for l in labels) + " |")
    return "\n".join(lines)
