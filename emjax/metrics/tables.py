"""The three metrics as tidy tables: efficiency (loss vs norm), stability (orthogonal noise) and
pre-training significance (KL on FineWeb), each evaluated with the vmapped sweeps of
`emjax.metrics.sweeps`. Losses are token-weighted means over all evaluation rows (right-padded
batches, so the fused cuDNN attention is used on NVIDIA GPUs where the model allows).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from emjax.checkpoints.load import LoadedModel
from emjax.data.conversations import read_chat_jsonl
from emjax.data.fineweb import load_fineweb_texts, stream_fineweb
from emjax.data.mixtures import resolve_data_spec
from emjax.data.tokenize import pad_batch, tokenize_plain, tokenize_sft
from emjax.interventions import Interventions
from emjax.interventions import arithmetic as A
from emjax.metrics import sweeps as SW
from emjax.model.attention import resolve_attention


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
                               loss_mask=jnp.asarray(b["loss_mask"]), chunk=c.chunk,
                               loss_chunk=c.loss_chunk,
                               attention=resolve_attention("auto", model.cfg))
    return np.asarray(SW.batched_rows(one, batches))


def efficiency(model: LoadedModel, ivs: dict[str, Interventions], c: ml_collections.ConfigDict) -> pd.DataFrame:
    """Training loss of every intervention rescaled to multiples of its trained norm (and to the
    others' trained norms; LoRA also with B scaled). One row per (intervention, version)."""
    batches = _row_batches(model, c)
    trained = {k: float(A.tree_norm(v)) for k, v in ivs.items()}
    records = []
    for label, iv in tqdm(ivs.items(), desc="efficiency", unit="intervention"):
        norms = [s * trained[label] for s in c.efficiency.scales]
        if c.efficiency.equal_norm:
            norms += [n for k, n in trained.items() if k != label]
        losses = _mean_over_batches(A.rescale_to_norms(iv, norms), model, batches, "ce", c)
        for n, loss in zip(norms, losses):
            records.append({"intervention": label, "sweep": "rescale", "norm": n, "scale": n / trained[label],
                            "loss": float(loss), **_describe(iv)})
        if iv.lora is not None and c.efficiency.lora_delta_factors:
            factors = list(c.efficiency.lora_delta_factors)
            stacked = A.scale_lora_delta(iv, factors)
            losses = _mean_over_batches(stacked, model, batches, "ce", c)
            norms = np.asarray(jax.vmap(A.tree_norm)(stacked))
            for f, n, loss in zip(factors, norms, losses):
                records.append({"intervention": label, "sweep": "lora_delta_factor", "norm": float(n),
                                "scale": f, "loss": float(loss), **_describe(iv)})
    df = pd.DataFrame(records)
    df["efficiency_ratio"] = df["loss"] / np.where(df["norm"] > 0, df["norm"] ** 2, np.nan)
    return df


def stability(model: LoadedModel, ivs: dict[str, Interventions], c: ml_collections.ConfigDict) -> pd.DataFrame:
    """Training loss under orthogonal noise of fraction eps, per seed, relative to the trained and
    the zero intervention. One row per (intervention, eps, seed)."""
    batches = _row_batches(model, c)
    records = []
    for label, iv in tqdm(ivs.items(), desc="stability", unit="intervention"):
        stacked, ee, ss = A.perturbation_grid(iv, list(c.stability.eps), list(range(c.stability.seeds)))
        ends = A.stack_trees([iv, A.tree_scale(iv, 0.0)])
        l_orig, l_base = _mean_over_batches(ends, model, batches, "ce", c)
        losses = _mean_over_batches(stacked, model, batches, "ce", c)
        for e, s, loss in zip(ee, ss, losses):
            records.append({"intervention": label, "eps": float(e), "seed": int(s), "loss": float(loss),
                            "loss_orig": float(l_orig), "loss_base": float(l_base),
                            "norm": float(A.tree_norm(iv)), **_describe(iv)})
    df = pd.DataFrame(records)
    df["relative_increase"] = (df["loss"] - df["loss_orig"]) / (df["loss_base"] - df["loss_orig"])
    return df


def significance(model: LoadedModel, ivs: dict[str, Interventions], c: ml_collections.ConfigDict
                 ) -> pd.DataFrame:
    """KL(chat || intervened) on FineWeb text at a range of norms, for every intervention and for
    norm-matched random directions. One row per (intervention, norm)."""
    batches = _corpus_batches(model, c)
    s = c.significance
    top = max(float(A.tree_norm(v)) for v in ivs.values())
    norms = [n * top for n in s.norms] if s.norms_relative else list(s.norms)
    sets = dict(ivs)
    first = next(iter(ivs.values()))
    for r in range(s.n_random):  # norm-matched random directions, same structure as the first
        sets[f"random{r}"] = A.random_like(first, jax.random.PRNGKey(1000 + r))
    records = []
    for label, iv in tqdm(sets.items(), desc="significance", unit="intervention"):
        kls = _mean_over_batches(A.rescale_to_norms(iv, norms), model, batches, "kl", c)
        for n, kl in zip(norms, kls):
            records.append({"intervention": label, "random": label.startswith("random"), "norm": n,
                            "applied_norm": n * _describe(iv)["alpha"] if iv.steer is not None else None,
                            "kl": float(kl), **_describe(iv)})
    return pd.DataFrame(records)
