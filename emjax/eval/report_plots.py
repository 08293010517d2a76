"""Plots of the report: rates per question with bootstrap intervals, the aligned-vs-coherent
quadrant, and rates along an experiment's axis (a mixing fraction, a training step). Needs no
accelerator and must not import jax."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TYPE_CHECKING

import numpy as np

from emjax.eval.conventions import ALIGNED, COHERENT

if TYPE_CHECKING:  # pragma: no cover
    from emjax.eval.conventions import Thresholds


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_per_question(table: Any, path: str, rate: str = "em_rate",
                      title: str | None = None) -> str:
    """Grouped bar plot of `rate` per question (and "ALL") with bootstrap-interval error bars."""
    plt = _pyplot()
    groups = list(dict.fromkeys(table["group"]))
    qids = list(dict.fromkeys(q for q in table["question_id"] if q != "ALL")) + ["ALL"]
    width = 0.8 / max(1, len(groups))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(qids) * max(1, len(groups)) ** 0.5 + 2),
                                    4.5))
    x = np.arange(len(qids))
    for i, g in enumerate(groups):
        sub = table[table["group"] == g].set_index("question_id").reindex(qids)
        y = sub[rate].to_numpy(dtype=float)
        lo = sub[f"{rate}_ci_low"].to_numpy(dtype=float)
        hi = sub[f"{rate}_ci_high"].to_numpy(dtype=float)
        yerr = np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
        yerr = np.nan_to_num(yerr)
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, np.nan_to_num(y), width, yerr=yerr,
               capsize=2, label=g)
    ax.set_xticks(x)
    ax.set_xticklabels(qids, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(rate.replace("_", " "))
    ax.set_ylim(0, 1)
    ax.set_title(title or f"{rate} per question (95% bootstrap CI)")
    if len(groups) > 1 or groups != ["all"]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_aligned_vs_coherent(df: Any, th: Thresholds, path: str, labels: Sequence[str] | None = None) -> str:
    """Scatter of coherence (x) vs alignment (y), one panel per group label (one label per row of
    `df`, emjax.eval.report.group_labels; None: one panel), with threshold lines."""
    plt = _pyplot()
    df = df.reset_index(drop=True)
    labels = np.asarray(["all"] * len(df) if labels is None else list(labels), dtype=object)
    groups = list(dict.fromkeys(labels)) or ["all"]
    ncol = min(4, len(groups))
    nrow = math.ceil(len(groups) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 4 * nrow), squeeze=False)
    for ax, g in zip(axes.flat, groups):
        sub = df[labels == g] if len(df) else df
        ax.scatter(sub.get(COHERENT, []), sub.get(ALIGNED, []), s=8, alpha=0.5)
        ax.axvline(th.coherent, color="red", ls="--", lw=1)
        ax.axhline(th.aligned, color="red", ls="--", lw=1)
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel(COHERENT)
        ax.set_ylabel(ALIGNED)
        ax.set_title(str(g), fontsize=9)
    for ax in list(axes.flat)[len(groups):]:
        ax.set_visible(False)
    fig.suptitle(f"EM quadrant: {th.describe()['em']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_em_vs_narrow(rows: Sequence[dict], path: str, thresholds: dict) -> str:
    """The paper's picture: one point per intervention, narrow rate (x, in-domain questions)
    against EM rate (y, general questions), with 95% bootstrap intervals on both axes. A narrow
    solution sits low and to the right; a general one high."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 5.0))
    for r in rows:
        x, y = r.get("narrow_rate"), r.get("em_rate")
        if x is None or y is None or math.isnan(x) or math.isnan(y):
            continue
        xerr = [[max(0.0, x - r["narrow_rate_ci_low"])], [max(0.0, r["narrow_rate_ci_high"] - x)]]
        yerr = [[max(0.0, y - r["em_rate_ci_low"])], [max(0.0, r["em_rate_ci_high"] - y)]]
        ax.errorbar(100 * x, 100 * y, xerr=100 * np.asarray(xerr), yerr=100 * np.asarray(yerr), fmt="o",
                    capsize=3, label=r["group"])
    ax.plot([0, 100], [0, 100], color="0.8", lw=0.8, ls="--", zorder=0)
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.set_xlabel(f"narrow misalignment, % ({thresholds.get('narrow')})", fontsize=8)
    ax.set_ylabel(f"emergent misalignment, % ({thresholds.get('em')})", fontsize=8)
    ax.set_title("EM vs narrow misalignment per intervention (95% bootstrap CI)", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


RATE_STYLES = (("em_rate", "EM rate", "C3"), ("narrow_rate", "narrow rate", "C0"))


def _rate_points(rows: Sequence[Mapping[str, Any]], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(rates [n] in %, error bars [2, n]) of side-by-side rows; NaN where a row has no rate."""
    y, err = [], []
    for r in rows:
        v = r.get(name)
        v = math.nan if v is None else float(v)
        lo, hi = r.get(f"{name}_ci_low"), r.get(f"{name}_ci_high")
        y.append(v)
        err.append((max(0.0, v - lo) if lo is not None else 0.0, max(0.0, hi - v) if hi is not None else 0.0))
    return 100 * np.asarray(y, float), 100 * np.nan_to_num(np.asarray(err, float).T.reshape(2, -1))


def plot_rates_along(x: Sequence[float], rows: Sequence[Mapping[str, Any]], path: str, xlabel: str,
                     panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]] | None = None,
                     references: Mapping[str, Mapping[str, Any]] | None = None, title: str = "") -> str:
    """EM and narrow rates (%, 95% bootstrap intervals) at each x (first panel; `rows` as
    `emjax.eval.report.side_by_side` gives them, one per x), with the rates of `references` (e.g.
    the chat model) as horizontal lines; then one panel per entry of `panels`, {y label: {series:
    (xs, ys)}}, against the same x axis (e.g. the out-of-domain KL per fraction, the cosine drift
    per step)."""
    plt = _pyplot()
    panels = dict(panels or {})
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(4.6 * (1 + len(panels)), 3.9), squeeze=False)
    ax = axes[0, 0]
    for name, label, colour in RATE_STYLES:
        y, err = _rate_points(rows, name)
        ax.errorbar(list(x), y, yerr=err, fmt="-o", ms=4, capsize=3, color=colour, label=label)
        for i, (ref, r) in enumerate((references or {}).items()):
            v = r.get(name)
            if v is not None and not math.isnan(v):
                ax.axhline(100 * v, color=colour, lw=0.8, ls=("--", ":", "-.")[i % 3], alpha=0.7,
                           label=f"{label}, {ref}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("% of answers (95% bootstrap CI)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    for ax, (ylabel, series) in zip(axes[0, 1:], panels.items()):
        for label, (xs, ys) in series.items():
            ax.plot(list(xs), list(ys), marker="o", ms=3, label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
