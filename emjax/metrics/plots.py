"""The three metrics' plots in the paper's style (PNG), from the tables of `emjax.metrics.tables`.

Every norm axis says which norm it shows (the tables' `norm_kind`): `||scale·BA||_F (effective
update)` for LoRA, `||alpha·v|| (applied vector)` for steering.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def norm_label(df: pd.DataFrame) -> str:
    """The x-axis label for the norms of `df` (its `norm_kind` column; several kinds listed)."""
    kinds = sorted(set(df["norm_kind"])) if "norm_kind" in df else []
    if len(kinds) == 1:
        return f"norm {kinds[0]}"
    return "norm: " + "; ".join(kinds) + " (different quantities)" if kinds else "norm"


def plot(kind: str, df: pd.DataFrame, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    if kind == "efficiency":
        for k, d in df[df.sweep == "rescale"].groupby("intervention"):
            d = d.sort_values("norm")
            ax.plot(d.norm, d.loss, marker="o", label=k)
            t = d[np.isclose(d.scale, 1.0)]
            ax.scatter(t.norm, t.loss, s=120, facecolors="none", edgecolors="k")
        ax.set_xlabel(norm_label(df))
        ax.set_ylabel("training loss (nats/token)")
        ax.set_title("Efficiency: loss vs norm (circles: trained)")
    elif kind == "stability":
        for k, d in df.groupby("intervention"):
            g = d.groupby("eps").relative_increase
            ax.plot(g.mean().index, g.mean().values, marker="o", label=f"{k} ({d.noise.iloc[0]} noise)")
            ax.fill_between(g.mean().index, g.min().values, g.max().values, alpha=0.2)
        ax.set_xlabel("noise fraction eps")
        ax.set_ylabel("(L_pert - L_orig) / (L_base - L_orig)")
        ax.set_title("Stability under orthogonal noise (band: seeds)")
    else:
        rnd = df[df.random].groupby("norm").kl
        if len(df[df.random]):
            ax.fill_between(rnd.min().index, rnd.min().values, rnd.max().values, color="grey", alpha=0.3,
                            label="random (norm-matched)")
        for k, d in df[~df.random].groupby("intervention"):
            d = d.sort_values("norm")
            ax.plot(d.norm, d.kl, marker="o", label=k)
        ax.set_xlabel(norm_label(df))
        ax.set_ylabel("KL(chat || intervened), nats/token")
        ax.set_title("Pre-training significance on FineWeb")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
