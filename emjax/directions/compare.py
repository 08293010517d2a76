"""Cosine similarities between named directions, per layer: a long table and heat maps.

    table = cosine_table(directions)     # DataFrame: layer, a, b, cosine, abs_cosine, chance
    plot_cosines(table, "cos.png", layer=12)

A pair appears at every layer where both directions have a vector. `chance` is the expected
|cos| of two independent Gaussian directions in D dimensions, sqrt(2 / (pi D)) (about 0.027 for
D = 896): a cosine near it says "unrelated", not "orthogonal by design". Pairs involving a LoRA
direction (`Direction.sign_free`) have no meaningful sign: read `abs_cosine` for them.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from emjax.directions.sources import Direction


def cosine(x: np.ndarray, y: np.ndarray) -> float:
    """cos(x, y) in float64; NaN when either is zero."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = np.linalg.norm(x) * np.linalg.norm(y)
    return float(x @ y / n) if n > 0 else math.nan


def chance_abs_cosine(d: int) -> float:
    """E|cos| of two independent isotropic Gaussian vectors in d dimensions (large-d limit)."""
    return math.sqrt(2.0 / (math.pi * d))


def cosine_table(directions: dict[str, Direction]) -> pd.DataFrame:
    """One row per (layer, pair of labels) where both have a vector at that layer."""
    rows = []
    for a, b in itertools.combinations(directions, 2):
        da, db = directions[a], directions[b]
        for layer in sorted(set(da.vectors) & set(db.vectors)):
            c = cosine(da.vectors[layer], db.vectors[layer])
            rows.append({"layer": layer, "a": a, "b": b, "cosine": c, "abs_cosine": abs(c),
                         "sign_free": da.sign_free or db.sign_free,
                         "chance": chance_abs_cosine(len(da.vectors[layer]))})
    return pd.DataFrame(rows, columns=["layer", "a", "b", "cosine", "abs_cosine", "sign_free", "chance"])


def matrix_at(table: pd.DataFrame, labels: list[str], layer: int) -> np.ndarray:
    """[n, n] cosines among `labels` at `layer` (1 on the diagonal, NaN where a pair is absent)."""
    idx = {l: i for i, l in enumerate(labels)}
    m = np.full((len(labels), len(labels)), np.nan)
    np.fill_diagonal(m, 1.0)
    for r in table[table["layer"] == layer].itertuples():
        m[idx[r.a], idx[r.b]] = m[idx[r.b], idx[r.a]] = r.cosine
    return m


def focus_layer(directions: dict[str, Direction]) -> int:
    """The layer shared by most directions (ties: the lowest), where the matrix is most complete."""
    counts: dict[int, int] = {}
    for d in directions.values():
        for l in d.vectors:
            counts[l] = counts.get(l, 0) + 1
    if not counts:
        raise ValueError("no direction has a vector")
    return min(counts, key=lambda l: (-counts[l], l))


def markdown_matrix(table: pd.DataFrame, labels: list[str], layer: int) -> str:
    m = matrix_at(table, labels, layer)
    lines = [f"| layer {layer} | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for i, l in enumerate(labels):
        lines.append(f"| {l} | " + " | ".join("" if math.isnan(v) else f"{v:+.3f}" for v in m[i]) + " |")
    return "\n".join(lines)


def plot_cosines(table: pd.DataFrame, labels: list[str], layer: int, path: str) -> str:
    """Two panels: the label x label cosine matrix at `layer`, and every pair's cosine across layers
    (pairs as rows, layers as columns; blank where a pair has no common layer)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = sorted({(r.a, r.b) for r in table.itertuples()}, key=lambda p: (labels.index(p[0]), labels.index(p[1])))
    layers = sorted(table["layer"].unique())
    grid = np.full((len(pairs), len(layers)), np.nan)
    for r in table.itertuples():
        grid[pairs.index((r.a, r.b)), layers.index(r.layer)] = r.cosine
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(5 + 0.25 * len(layers), 0.6 * max(len(labels), len(pairs)) + 2),
                                   gridspec_kw={"width_ratios": [1, max(1.0, len(layers) / 8)]})
    m = matrix_at(table, labels, layer)
    im = ax0.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
    ax0.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax0.set_yticks(range(len(labels)), labels)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if not math.isnan(m[i, j]):
                ax0.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8)
    ax0.set_title(f"cosine at layer {layer}")
    ax1.imshow(grid, vmin=-1, vmax=1, cmap="RdBu_r", aspect="auto")
    ax1.set_yticks(range(len(pairs)), [f"{a} / {b}" for a, b in pairs], fontsize=8)
    step = max(1, len(layers) // 12)
    ax1.set_xticks(range(0, len(layers), step), [str(layers[i]) for i in range(0, len(layers), step)])
    ax1.set_xlabel("layer (residual after the block)")
    ax1.set_title("cosine per layer")
    fig.colorbar(im, ax=[ax0, ax1], shrink=0.8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
