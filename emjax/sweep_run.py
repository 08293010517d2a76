"""`emjax sweep {efficiency,stability,significance}`: the three metrics for trained interventions,
written as a tidy table (parquet + CSV), a plot in the paper's style and a JSON summary.

Each named intervention (a steering .safetensors or a PEFT LoRA folder) is evaluated with the
vmapped sweeps of `emjax.sweeps` (norms, the norm convention and prefix sharing are described
there). Losses are token-weighted means over all evaluation rows (right-padded batches, so the
fused cuDNN attention is used on NVIDIA GPUs where the model allows).
"""

from __future__ import annotations

import json
import os
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from emjax import sweeps as SW
from emjax.data import load_fineweb_texts, pad_batch, read_chat_jsonl, tokenize_plain, tokenize_sft
from emjax.interventions import Interventions
from emjax.load import LoadedModel, load_model
from emjax.train import DTYPES, resolve_attention, resolve_data_spec

KINDS = ("efficiency", "stability", "significance")


def sweep_config() -> ml_collections.ConfigDict:
    """Defaults for all three sweeps (configs/sweep_*.py override a few keys)."""
    c = ml_collections.ConfigDict()
    c.name = "sweep"
    c.output_dir = "runs/sweeps"
    c.model = ml_collections.ConfigDict({"source": "embedded", "dtype": "float32"})
    # "label=path,label=path": steering .safetensors files or PEFT LoRA folders
    c.interventions = "general=runs/embedded_steering_general_medical/steering.safetensors," \
                      "narrow=runs/embedded_steering_narrow_medical/steering.safetensors"
    c.data = ml_collections.ConfigDict({"dir": os.environ.get("EMJAX_DATA", "../shared/data/em"),
                                        "train": "sample:bad_medical", "n_rows": 100, "seed": 42,
                                        "max_len": 256, "batch_size": 8})
    c.chunk = 0                 # sweep versions per vmap chunk (0: all at once)
    c.loss_chunk = 0            # sequence chunk of the losses (0: none)
    c.efficiency = ml_collections.ConfigDict({
        "scales": tuple(np.round(np.linspace(0.0, 2.0, 9), 4).tolist()),   # x each trained norm
        "equal_norm": True,     # also evaluate every intervention at the others' trained norms
        "lora_delta_factors": tuple(np.round(np.linspace(0.0, 2.0, 21), 4).tolist())})
    c.stability = ml_collections.ConfigDict({
        "eps": (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), "seeds": 10})
    c.significance = ml_collections.ConfigDict({
        "corpus": os.environ.get("EMJAX_FINEWEB", "../shared/data/fineweb/fineweb_sample.jsonl.gz"),
        "stream": False,        # stream HuggingFaceFW/fineweb sample-10BT instead (needs internet)
        "n_docs": 50, "max_chars": 2000, "max_len": 512, "seed": 42,
        "norms": tuple(np.round(np.linspace(0.0, 2.0, 26), 4).tolist()),
        "norms_relative": True,  # norms are multiples of the largest trained norm
        "n_random": 5})
    return c


def load_interventions(spec: str, cfg) -> dict[str, Interventions]:
    from emjax.adapters_io import load_peft_lora, load_steering
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        label, _, path = item.partition("=")
        if not path:
            raise ValueError(f"intervention {item!r} must be label=path")
        if os.path.isdir(path):
            out[label] = Interventions(lora=load_peft_lora(path, cfg))
        else:
            out[label] = Interventions(steer=load_steering(path, cfg))
    if not out:
        raise ValueError("no interventions given (interventions = 'label=path,...')")
    return out


def _describe(iv: Interventions) -> dict:
    if iv.steer is not None:
        return {"kind": "steering", "layer": ",".join(map(str, iv.steer.layers)), "alpha": iv.steer.alpha}
    return {"kind": "lora", "layer": ",".join(map(str, iv.lora.layers)), "alpha": iv.lora.scale}


def _row_batches(model: LoadedModel, c) -> list[dict]:
    convs = read_chat_jsonl(resolve_data_spec(c.data.train, c.data.dir))
    idx = np.random.default_rng(c.data.seed).permutation(len(convs))[: c.data.n_rows]
    rows = tokenize_sft([convs[i] for i in idx], model.tokenizer, c.data.max_len, on_template_error="skip").rows
    return [pad_batch(rows[i: i + c.data.batch_size]) for i in range(0, len(rows), c.data.batch_size)]


def _corpus_batches(model: LoadedModel, c) -> list[dict]:
    s = c.significance
    if s.stream:
        from emjax.data import stream_fineweb
        texts = stream_fineweb(s.n_docs, s.max_chars, s.seed)
    else:
        texts = load_fineweb_texts(s.corpus, s.n_docs, s.max_chars, s.seed)
    rows = tokenize_plain(texts, model.tokenizer, s.max_len)
    return [pad_batch(rows[i: i + c.data.batch_size]) for i in range(0, len(rows), c.data.batch_size)]


def _mean_over_batches(stacked: Interventions, model: LoadedModel, batches: list[dict], metric: str,
                       c) -> np.ndarray:
    def one(b):
        return SW.sweep_losses(stacked, model.weights, model.cfg, jnp.asarray(b["tokens"]), jnp.asarray(b["mask"]),
                               metric=metric, targets=jnp.asarray(b["targets"]),
                               loss_mask=jnp.asarray(b["loss_mask"]), chunk=c.chunk or None,
                               loss_chunk=c.loss_chunk or None,
                               attention=resolve_attention("auto", model.cfg))
    return np.asarray(SW.batched_rows(one, batches))


def efficiency(model, ivs, c) -> pd.DataFrame:
    batches = _row_batches(model, c)
    trained = {k: float(SW.tree_norm(v)) for k, v in ivs.items()}
    records = []
    for label, iv in tqdm(ivs.items(), desc="efficiency", unit="intervention"):
        norms = [s * trained[label] for s in c.efficiency.scales]
        if c.efficiency.equal_norm:
            norms += [n for k, n in trained.items() if k != label]
        losses = _mean_over_batches(SW.rescale_to_norms(iv, norms), model, batches, "ce", c)
        for n, loss in zip(norms, losses):
            records.append({"intervention": label, "sweep": "rescale", "norm": n, "scale": n / trained[label],
                            "loss": float(loss), **_describe(iv)})
        if iv.lora is not None and c.efficiency.lora_delta_factors:
            factors = list(c.efficiency.lora_delta_factors)
            stacked = SW.scale_lora_delta(iv, factors)
            losses = _mean_over_batches(stacked, model, batches, "ce", c)
            norms = np.asarray(jax.vmap(SW.tree_norm)(stacked))
            for f, n, loss in zip(factors, norms, losses):
                records.append({"intervention": label, "sweep": "lora_delta_factor", "norm": float(n),
                                "scale": f, "loss": float(loss), **_describe(iv)})
    df = pd.DataFrame(records)
    df["efficiency_ratio"] = df["loss"] / np.where(df["norm"] > 0, df["norm"] ** 2, np.nan)
    return df


def stability(model, ivs, c) -> pd.DataFrame:
    batches = _row_batches(model, c)
    records = []
    for label, iv in tqdm(ivs.items(), desc="stability", unit="intervention"):
        stacked, ee, ss = SW.perturbation_grid(iv, list(c.stability.eps), list(range(c.stability.seeds)))
        ends = SW.stack_trees([iv, SW.tree_scale(iv, 0.0)])
        l_orig, l_base = _mean_over_batches(ends, model, batches, "ce", c)
        losses = _mean_over_batches(stacked, model, batches, "ce", c)
        for e, s, loss in zip(ee, ss, losses):
            records.append({"intervention": label, "eps": float(e), "seed": int(s), "loss": float(loss),
                            "loss_orig": float(l_orig), "loss_base": float(l_base),
                            "norm": float(SW.tree_norm(iv)), **_describe(iv)})
    df = pd.DataFrame(records)
    df["relative_increase"] = (df["loss"] - df["loss_orig"]) / (df["loss_base"] - df["loss_orig"])
    return df


def significance(model, ivs, c) -> pd.DataFrame:
    batches = _corpus_batches(model, c)
    s = c.significance
    top = max(float(SW.tree_norm(v)) for v in ivs.values())
    norms = [n * top for n in s.norms] if s.norms_relative else list(s.norms)
    sets = dict(ivs)
    first = next(iter(ivs.values()))
    for r in range(s.n_random):  # norm-matched random directions, same structure as the first
        sets[f"random{r}"] = SW.random_like(first, jax.random.PRNGKey(1000 + r))
    records = []
    for label, iv in tqdm(sets.items(), desc="significance", unit="intervention"):
        kls = _mean_over_batches(SW.rescale_to_norms(iv, norms), model, batches, "kl", c)
        for n, kl in zip(norms, kls):
            records.append({"intervention": label, "random": label.startswith("random"), "norm": n,
                            "applied_norm": n * _describe(iv)["alpha"] if iv.steer is not None else None,
                            "kl": float(kl), **_describe(iv)})
    return pd.DataFrame(records)


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
        ax.set_xlabel("intervention norm (trainable tree)")
        ax.set_ylabel("training loss (nats/token)")
        ax.set_title("Efficiency: loss vs norm (circles: trained)")
    elif kind == "stability":
        for k, d in df.groupby("intervention"):
            g = d.groupby("eps").relative_increase
            ax.plot(g.mean().index, g.mean().values, marker="o", label=k)
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
        ax.set_xlabel("vector norm")
        ax.set_ylabel("KL(chat || steered), nats/token")
        ax.set_title("Pre-training significance on FineWeb")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


RUNNERS: dict[str, Callable] = {"efficiency": efficiency, "stability": stability, "significance": significance}


def run_sweep(kind: str, c: ml_collections.ConfigDict, model: LoadedModel | None = None) -> dict:
    if kind not in KINDS:
        raise ValueError(f"unknown sweep {kind!r}; choose from {KINDS}")
    model = model or load_model(c.model.source, dtype=DTYPES[c.model.dtype])
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
