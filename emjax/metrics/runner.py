"""`emjax sweep {efficiency,stability,significance,all}`: the three metrics for trained
interventions, each written as a tidy table (parquet + CSV), a plot in the paper's style and a JSON
summary. The config is configs/sweep_default.py and the files beside it.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import ml_collections
import numpy as np
import pandas as pd

from emjax.checkpoints.load import LoadedModel, load_model
from emjax.errors import EmjaxError
from emjax.interventions.files import load_interventions
from emjax.metrics import tables as T
from emjax.metrics.plots import plot
from emjax.model.config import dtype_from_name

KINDS = ("efficiency", "stability", "significance")


class SweepConfigError(EmjaxError, ValueError):
    """A sweep that cannot run as configured."""


def _summary(kind: str, df: pd.DataFrame, labels: list[str]) -> dict:
    out: dict = {"kind": kind, "interventions": labels}
    if kind == "efficiency":
        resc = df[df.sweep == "rescale"]
        trained = resc[np.isclose(resc.scale, 1.0)].set_index("intervention")
        out["at_trained_norm"] = {k: {"norm": float(r.norm), "loss": float(r.loss),
                                      "efficiency_ratio": float(r.efficiency_ratio)} for k, r in trained.iterrows()}
        eq = {}
        for k in labels:  # every intervention at every trained norm
            for other in labels:
                n = float(trained.loc[other, "norm"])
                hit = resc[(resc.intervention == k) & np.isclose(resc.norm, n)]
                if len(hit):
                    eq.setdefault(f"at_norm_of_{other}", {})[k] = float(hit.loss.iloc[0])
        out["equal_norm_loss"] = eq
        out["note"] = "lower loss at equal norm = more efficient (the paper: general beats narrow)"
    elif kind == "stability":
        g = df.groupby(["intervention", "eps"]).relative_increase.agg(["mean", "min", "max"]).reset_index()
        out["relative_increase"] = {k: {f"{e:g}": float(m) for e, m in zip(d.eps, d["mean"])}
                                    for k, d in g.groupby("intervention")}
        out["mean_relative_increase"] = {k: float(d["mean"].mean()) for k, d in g.groupby("intervention")}
        out["note"] = "(L_pert - L_orig) / (L_base - L_orig); lower = more stable (the paper: general)"
    else:
        real = df[~df.random]
        out["kl_at_max_norm"] = {k: float(d.sort_values("norm").kl.iloc[-1]) for k, d in real.groupby("intervention")}
        rnd = df[df.random].groupby("norm").kl
        out["random_kl_at_max_norm"] = {"min": float(rnd.min().iloc[-1]), "max": float(rnd.max().iloc[-1])} \
            if len(df[df.random]) else None
        out["note"] = "KL(chat || steered) on the corpus; larger = more significant for pre-training (the paper: general)"
    return out


RUNNERS: dict[str, Callable] = {"efficiency": T.efficiency, "stability": T.stability,
                                "significance": T.significance}


def run_sweep(kind: str, c: ml_collections.ConfigDict, model: LoadedModel | None = None) -> dict:
    """One metric for the config's interventions: writes {kind}.parquet / .csv / .png and
    {kind}_summary.json under c.output_dir and returns the summary."""
    if kind not in KINDS:
        raise SweepConfigError(f"unknown sweep {kind!r}; choose from {KINDS}")
    model = model or load_model(c.model.source, dtype=dtype_from_name(c.model.dtype))
    ivs = load_interventions(c.interventions, model.cfg)
    df = RUNNERS[kind](model, ivs, c)
    df.insert(0, "run", c.name)
    os.makedirs(c.output_dir, exist_ok=True)
    base = os.path.join(c.output_dir, kind)
    df.to_csv(base + ".csv", index=False)
    df.to_parquet(base + ".parquet", index=False)
    plot(kind, df, base + ".png")
    summary = _summary(kind, df, list(ivs))
    summary.update(files={"table": base + ".parquet", "csv": base + ".csv", "plot": base + ".png"})
    with open(base + "_summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def sweep(c: ml_collections.ConfigDict, kinds: Sequence[str] = KINDS, model: LoadedModel | None = None
          ) -> dict[str, dict]:
    """The stage `emjax sweep`: each of `kinds` for the config's interventions (the model is
    loaded once); returns {kind: summary}."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SweepConfigError(f"unknown sweeps {unknown}; choose from {KINDS}")
    model = model or load_model(c.model.source, dtype=dtype_from_name(c.model.dtype))
    return {k: run_sweep(k, c, model) for k in kinds}
