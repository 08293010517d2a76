"""Drift of a training run toward reference directions: read back what the trainer logged, plot
it, and recompute it from saved snapshots.

With `train.reference = "general=...,narrow=..."` every evaluation of a run logs, per reference,
`cos_<label>` (cosine of the trained intervention's effect with the reference's) and
`proj_<label>` (the length of its effect along the reference, in update-norm units;
`emjax.interventions.similarity`). A KL-removal run (start from the narrow vector, KL off) then
shows, step by step, whether the solution drifts toward the general one.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Mapping

import pandas as pd

from emjax.interventions.files import load_intervention
from emjax.interventions.similarity import effect_cosine, effect_projection
from emjax.model.config import ModelConfig


def drift_table(run_dir: str) -> pd.DataFrame:
    """step, and every cos_* / proj_* column, from the run's metrics.jsonl (evaluation lines)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no metrics log (is {run_dir} a training run folder?)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            keep = {k: v for k, v in rec.items() if k.startswith(("cos_", "proj_"))}
            if keep:
                rows.append({"step": rec["step"], **keep})
    if not rows:
        raise ValueError(f"{path}: no cos_/proj_ columns; train with train.reference='label=path,...'")
    return pd.DataFrame(rows).drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)


def snapshot_paths(run_dir: str) -> dict[int, str]:
    """step -> the intervention file of each `snapshots/step_*/` of a run (`checkpoint.snapshot_every`)."""
    out = {}
    for folder in sorted(glob.glob(os.path.join(run_dir, "snapshots", "step_*"))):
        step = int(re.search(r"step_(\d+)$", folder).group(1))
        path = os.path.join(folder, "steering.safetensors")
        out[step] = path if os.path.exists(path) else os.path.join(folder, "lora")
    return out


def drift_at(paths: Mapping[int, str], references: dict, cfg: ModelConfig) -> pd.DataFrame:
    """step, cos_<label> and proj_<label> of the intervention file saved at each step."""
    rows = []
    for step, path in sorted(paths.items()):
        iv = load_intervention(path, cfg)
        row = {"step": step}
        for label, ref in references.items():
            row[f"cos_{label}"] = float(effect_cosine(iv, ref))
            row[f"proj_{label}"] = float(effect_projection(iv, ref))
        rows.append(row)
    return pd.DataFrame(rows)


def snapshot_drift(run_dir: str, references: dict, cfg: ModelConfig) -> pd.DataFrame:
    """The same columns recomputed from `snapshots/step_*/` (`checkpoint.snapshot_every`)."""
    return drift_at(snapshot_paths(run_dir), references, cfg)


def plot_drift(table: pd.DataFrame, path: str, title: str = "") -> str:
    """Cosine (left) and projection (right) with each reference against the step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, prefix, ylabel in ((axes[0], "cos_", "cosine with reference"),
                               (axes[1], "proj_", "length along reference (update norm)")):
        for col in [c for c in table.columns if c.startswith(prefix)]:
            ax.plot(table["step"], table[col], marker="o", ms=3, label=col[len(prefix):])
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
