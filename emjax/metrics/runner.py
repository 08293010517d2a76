"""`emjax sweep {efficiency,stability,significance,all}`: the three metrics for trained
interventions, each written as a tidy table (parquet + CSV), a plot in the paper's style and a JSON
summary. The config is configs/sweep_default.py and the files beside it.

Every summary names the norm it uses (`norm_kind`) and carries a `comparability` entry (same kind,
same alpha / LoRA scale, separate LoRA inits; see `comparability`); its warnings are also printed.
The efficiency and stability summaries and tables name the tokens their losses are taken on
(`loss_tokens`, the config's `data.loss_tokens`).

A summary also records its `inputs` (the config sections the kind reads and the sha256 of every
intervention file) and its `timings`. `sweep` skips a kind whose outputs are all present with
the same inputs, and loads the model only when a kind is left to compute; a kind whose inputs
changed (another config, a retrained vector) is computed again.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import sys
from typing import Callable, Sequence

import ml_collections
import numpy as np
import pandas as pd

from emjax.checkpoints.load import LazyModel, LoadedModel, model_on_mesh
from emjax.data.tokenize import LOSS_TOKENS
from emjax.interventions import Interventions
from emjax.interventions import arithmetic as A
from emjax.interventions.files import load_interventions, parse_labelled_paths
from emjax.metrics import tables as T
from emjax.metrics.plots import plot
from emjax.metrics.preflight import SWEEP_RULES, SweepConfigError
from emjax.model.config import dtype_from_name
from emjax.model.mesh_plan import is_writer
from emjax.model.sharding import ShardingError
from emjax.timings import Timings, phase
from emjax.train.replicates import spread
from emjax.train.run_record import config_dict, config_differences

KINDS = ("efficiency", "stability", "significance")


# ours: A is random at init and moves little in training, so |cos| between the A matrices of two
# independently initialised adapters is ~1/sqrt(A's size) (about 0) and of a shared init near 1
SHARED_INIT_COSINE = 0.5


def _kind(iv: Interventions) -> str:
    return "lora+steering" if iv.lora is not None and iv.steer is not None else \
        "lora" if iv.lora is not None else "steering"


def _a_cosine(x: Interventions, y: Interventions) -> float | None:
    """Cosine between the flattened A matrices of two LoRA adapters of one structure (else None)."""
    if x.lora is None or y.lora is None or x.lora.modules != y.lora.modules or \
            any(x.lora.a[m].shape != y.lora.a[m].shape for m in x.lora.modules):
        return None
    a = np.concatenate([np.asarray(x.lora.a[m], np.float64).ravel() for m in x.lora.modules])
    b = np.concatenate([np.asarray(y.lora.a[m], np.float64).ravel() for m in y.lora.modules])
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else None


def comparability(ivs: dict[str, Interventions]) -> dict:
    """Whether the interventions' metrics compare like with like: notes, warnings and the facts.

    The paper compares a general and a narrow intervention of one kind and one alpha (docs/design.md
    section 1). The norms include the LoRA scale / steering alpha, so the x-axes agree whatever
    they are; but a different alpha is a different training run (the update's effective learning
    rate scales with it), so loss differences then mix alpha with general-vs-narrow. LoRA adapters
    should also come from separate init seeds: A moves little in training, so a shared init
    starts both updates in one column space (where the "update" stability noise lives too), and
    the comparison is then one init, not independent runs (ours: `SHARED_INIT_COSINE`).

    Returns {"ok": no warnings, "warnings": [...], "notes": [...], "kind", "norm_kind", "alpha"
    ({label: steering alpha or LoRA scale}), "lora_structure", "a_cosine" ({"x|y": cos})}.
    """
    warnings, notes = [], []
    kind = {k: _kind(v) for k, v in ivs.items()}
    alpha = {k: v.lora.scale if v.lora is not None else v.steer.alpha for k, v in ivs.items()}
    out: dict = {"kind": kind, "norm_kind": {k: A.norm_kind(v) for k, v in ivs.items()}, "alpha": alpha}
    if len(set(kind.values())) > 1:
        kinds = sorted(set(out["norm_kind"].values()))
        warnings.append(f"interventions of different kinds {kind}: their norms ({kinds}) are different "
                        "quantities, so equal-norm comparisons across kinds mean nothing")
    for part in ("lora", "steering"):
        labels = [k for k in ivs if part in kind[k].split("+")]
        if len(labels) < 2:
            continue
        mult = {k: ivs[k].lora.scale if part == "lora" else ivs[k].steer.alpha for k in labels}
        name = "LoRA scale (alpha/sqrt(r) or alpha/r)" if part == "lora" else "steering alpha"
        if len(set(mult.values())) > 1:
            warnings.append(f"{name} differs {mult}: the norms include it, so the axes agree, but the "
                            "interventions were trained at different alphas (a different effective learning "
                            "rate), so loss differences mix alpha with general vs narrow")
        else:
            notes.append(f"one {name} for all: {next(iter(mult.values()))}")
        if part == "steering":
            sites = {k: (ivs[k].steer.layers, ivs[k].steer.hook) for k in labels}
            if len(set(sites.values())) > 1:
                warnings.append(f"steering vectors at different sites (layers, hook) {sites}")
            continue
        struct = {k: {"rank": ivs[k].lora.rank, "modules": list(ivs[k].lora.modules),
                      "layers": list(ivs[k].lora.layers)} for k in labels}
        out["lora_structure"] = struct
        if len({json.dumps(v, sort_keys=True) for v in struct.values()}) > 1:
            warnings.append(f"LoRA adapters of different structure (rank, modules, layers) {struct}")
        cos = {}
        for x, y in itertools.combinations(labels, 2):
            c = _a_cosine(ivs[x], ivs[y])
            if c is None:
                continue
            cos[f"{x}|{y}"] = c
            if c > SHARED_INIT_COSINE:
                what = "identical" if c > 1 - 1e-6 else f"highly correlated (cos {c:.3f})"
                warnings.append(f"LoRA A matrices of {x} and {y} are {what}: a shared init (same init seed). "
                                "Train them from separate init seeds; the comparison is otherwise one init, "
                                "not independent runs")
        out["a_cosine"] = cos
        if cos and all(c <= SHARED_INIT_COSINE for c in cos.values()):
            notes.append(f"separate inits: |cos(A, A')| <= {SHARED_INIT_COSINE} for every pair")
    out.update(ok=not warnings, warnings=warnings, notes=notes)
    return out


def _summary(kind: str, df: pd.DataFrame, labels: list[str], comp: dict) -> dict:
    out: dict = {"kind": kind, "interventions": labels, "norm_kind": comp["norm_kind"], "comparability": comp}
    if "loss_tokens" in df:  # the losses on training rows: which tokens they are taken on
        out["loss_tokens"] = str(df.loss_tokens.iloc[0])
    if kind == "efficiency":
        resc = df[df.sweep == "rescale"]
        # scale 1 rows; an equal-norm point of another intervention can be scale 1 too (equal trained
        # norms, e.g. after a few Adam steps from zero): one row per intervention
        trained = resc[np.isclose(resc.scale, 1.0)].drop_duplicates("intervention").set_index("intervention")
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
        out["note"] = ("lower loss at equal norm = more efficient (the paper: general beats narrow); "
                       "norm: " + "; ".join(sorted(set(comp["norm_kind"].values()))))
    elif kind == "stability":
        g = df.groupby(["intervention", "eps"]).relative_increase.agg(["mean", "min", "max"]).reset_index()
        out["relative_increase"] = {k: {f"{e:g}": float(m) for e, m in zip(d.eps, d["mean"])}
                                    for k, d in g.groupby("intervention")}
        out["mean_relative_increase"] = {k: float(d["mean"].mean()) for k, d in g.groupby("intervention")}
        out["noise"] = {k: d.noise.iloc[0] for k, d in df.groupby("intervention")}
        out["note"] = ("(L_pert - L_orig) / (L_base - L_orig); lower = more stable (the paper: general); LoRA noise "
                       "'update': on scale·BA in the column space of A, norm kept; 'per_matrix': upstream's, on A and "
                       "B each")
    else:
        real = df[~df.random]
        out["kl_at_max_norm"] = {k: float(d.sort_values("norm").kl.iloc[-1]) for k, d in real.groupby("intervention")}
        rnd = df[df.random].groupby("norm").kl
        out["random_kl_at_max_norm"] = {"min": float(rnd.min().iloc[-1]), "max": float(rnd.max().iloc[-1])} \
            if len(df[df.random]) else None
        out["note"] = ("KL(chat || intervened) on the corpus; larger = more significant for pre-training (the "
                       "paper: general); random baselines at the same norm: "
                       + "; ".join(sorted(set(comp["norm_kind"].values()))))
    return out


_SEED = re.compile(r"[_/-]?seed\d+")


def across_seeds(summary: dict, labels: list[str]) -> dict | None:
    """Replicates pooled: labels that differ only in a "seed<N>" part (general_seed0, general_seed1)
    -> mean, std, min, max and n of every per-intervention number of the summary; None without
    replicates."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(_SEED.sub("", label), []).append(label)
    groups = {g: ls for g, ls in groups.items() if len(ls) > 1}
    if not groups:
        return None
    tables = {name: t for name, t in summary.items()
              if isinstance(t, dict) and any(isinstance(t.get(l), (int, float)) for l in labels)}
    if "at_trained_norm" in summary:
        tables["loss_at_trained_norm"] = {k: v["loss"] for k, v in summary["at_trained_norm"].items()}
    for name, t in summary.get("equal_norm_loss", {}).items():
        tables[f"loss_{name}"] = t
    return {name: {g: spread([t[l] for l in ls if isinstance(t.get(l), (int, float))]) for g, ls in groups.items()}
            for name, t in tables.items()}


RUNNERS: dict[str, Callable] = {"efficiency": T.efficiency, "stability": T.stability,
                                "significance": T.significance}


def check_loss_tokens(c: ml_collections.ConfigDict) -> None:
    """`data.loss_tokens` must be one of `emjax.data.tokenize.LOSS_TOKENS` (checked before the model
    loads)."""
    if c.data.loss_tokens not in LOSS_TOKENS:
        raise SweepConfigError(f"data.loss_tokens must be one of {LOSS_TOKENS}, got {c.data.loss_tokens!r}")


# Config keys that change how a sweep runs but not what it computes (ours): where it writes, the
# devices, and the batch and chunk sizes that bound memory.
SAME_SWEEP_KEYS = ("output_dir", "mesh", "chunk", "loss_chunk", "data.batch_size", "interventions")


def _sha256(path: str) -> str | None:
    """sha256 of a file, or of a folder's files (names and contents); None when it does not exist."""
    if not os.path.exists(path):
        return None
    h = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(os.path.join(path, f) for f in os.listdir(path))
    for f in files:
        if os.path.isfile(f):
            h.update(os.path.basename(f).encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def sweep_inputs(kind: str, c: ml_collections.ConfigDict) -> dict:
    """What the outputs of `kind` depend on: the config without the other kinds' sections and
    `SAME_SWEEP_KEYS`, and each intervention's label and file contents (sha256)."""
    conf = {k: v for k, v in config_dict(c).items() if k == kind or k not in KINDS}
    for key in SAME_SWEEP_KEYS:
        section, _, leaf = key.partition(".")
        if leaf:
            conf.get(section, {}).pop(leaf, None)
        else:
            conf.pop(section, None)
    ivs = {label: _sha256(path) for label, path in parse_labelled_paths(c.interventions).items()}
    return {"kind": kind, "config": conf, "interventions": ivs}


def finished_sweep(kind: str, c: ml_collections.ConfigDict, inputs: dict) -> dict | None:
    """The summary of `kind` in c.output_dir when all its outputs are there with these `inputs`
    (printed as one line), else None (with a line saying why, when its outputs are of other inputs)."""
    base = os.path.join(c.output_dir, kind)
    if not all(os.path.exists(base + ext) for ext in (".parquet", ".csv", ".png", "_summary.json")):
        return None
    with open(base + "_summary.json") as f:
        summary = json.load(f)
    recorded = summary.get("inputs")
    if recorded != inputs:
        diff = config_differences(recorded, inputs, ()) if recorded else ["no inputs recorded (an older emjax)"]
        print(f"{kind}: {base}_summary.json is of other inputs ({'; '.join(diff[:4]) or 'the interventions'}): "
              "computing it again")
        return None
    print(f"finished: {base}_summary.json")
    return summary


def run_sweep(kind: str, c: ml_collections.ConfigDict, model: LoadedModel | LazyModel | None = None,
              inputs: dict | None = None) -> dict:
    """One metric for the config's interventions: writes {kind}.parquet / .csv / .png and
    {kind}_summary.json under c.output_dir and returns the summary (inputs: `sweep_inputs(kind,
    c)`, computed when None)."""
    if kind not in KINDS:
        raise SweepConfigError(f"unknown sweep {kind!r}; choose from {KINDS}")
    from emjax.configuration import check_values
    check_values(c, SWEEP_RULES, error=SweepConfigError)
    check_loss_tokens(c)
    if kind == "stability" and c.stability.lora_noise not in A.LORA_NOISE:
        raise SweepConfigError(f"stability.lora_noise must be one of {A.LORA_NOISE}, got {c.stability.lora_noise!r}")
    timings = Timings()
    with timings.running():
        with phase("load"):
            model = on_mesh(c, model)
            inputs = inputs or sweep_inputs(kind, c)
            ivs = load_interventions(c.interventions, model.cfg)
        comp = comparability(ivs)
        for w in comp["warnings"]:
            print(f"warning: sweep {kind}: {w}", file=sys.stderr)
        with phase("compute"):
            df = RUNNERS[kind](model, ivs, c)
    df.insert(0, "run", c.name)
    base = os.path.join(c.output_dir, kind)
    summary = _summary(kind, df, list(ivs), comp)
    summary["across_seeds"] = across_seeds(summary, list(ivs))
    if kind == "significance":  # which FineWeb text: the shipped 64 documents are a smoke-scale sample
        s = c.significance
        summary["corpus"] = {"source": "stream HuggingFaceFW/fineweb sample-10BT" if s.stream else s.corpus,
                             "n_docs": s.n_docs, "max_chars": s.max_chars}
    summary.update(files={"table": base + ".parquet", "csv": base + ".csv", "plot": base + ".png"}, inputs=inputs,
                   timings=timings.report())
    if not is_writer():  # every process computes; process 0 writes
        return summary
    os.makedirs(c.output_dir, exist_ok=True)
    df.to_csv(base + ".csv", index=False)
    df.to_parquet(base + ".parquet", index=False)
    plot(kind, df, base + ".png")
    with open(base + "_summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def sweep(c: ml_collections.ConfigDict, kinds: Sequence[str] = KINDS, model: LoadedModel | LazyModel | None = None
          ) -> dict[str, dict]:
    """The stage `emjax sweep`: each of `kinds` for the config's interventions, but those whose
    outputs are on disk with the same inputs (`finished_sweep`); the model is loaded once, and only
    when a kind is left. Returns {kind: summary}."""
    from emjax.configuration import check_values
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise SweepConfigError(f"unknown sweeps {unknown}; choose from {KINDS}")
    check_values(c, SWEEP_RULES, error=SweepConfigError)
    check_loss_tokens(c)
    timings = Timings()
    with timings.running():
        with phase("data"):
            inputs = {k: sweep_inputs(k, c) for k in kinds}
            missing = {label: path for label, path in parse_labelled_paths(c.interventions).items()
                       if not os.path.exists(path)}
            if missing:  # before the model loads (a 14B load is not spent on a typo)
                raise SweepConfigError("interventions: " + ", ".join(f"{label}={path}" for label, path in missing.items())
                                       + ": no such file or folder (train it first, or fix the path)")
            done = {k: finished_sweep(k, c, inputs[k]) for k in kinds}
        if any(s is None for s in done.values()):
            with phase("load"):
                model = on_mesh(c, model)
            done = {k: s if s is not None else run_sweep(k, c, model, inputs[k]) for k, s in done.items()}
    timings.report()
    return done


def on_mesh(c: ml_collections.ConfigDict, model: LoadedModel | LazyModel | None) -> LoadedModel:
    """The config's model (loaded when None) on the mesh `c.mesh` asks for (`emjax.model.mesh_plan`)."""
    try:
        return model_on_mesh(model or c.model.source, c.get("mesh"), dtype=dtype_from_name(c.model.dtype))[0]
    except ShardingError as e:
        raise SweepConfigError(f"mesh: {e}") from None
