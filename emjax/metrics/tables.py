"""The three metrics as tidy tables: efficiency (loss vs norm), stability (orthogonal noise) and
pre-training significance (KL on FineWeb), each evaluated with the vmapped sweeps of
`emjax.metrics.sweeps`. Losses are token-weighted means over all evaluation rows (right-padded
batches, so the fused cuDNN attention is used on NVIDIA GPUs where the model allows), taken on the
tokens `data.loss_tokens` names (column `loss_tokens`: the assistant turns, or every token).

Every norm is `emjax.interventions.arithmetic.update_norm`, the size of what the intervention adds:
`||scale·BA||_F (effective update)` for LoRA, `||alpha·v|| (applied vector)` for steering; the
column `norm_kind` says which (so a steering table's `norm` is alpha times upstream's `||v||`).
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
from emjax.data.tokenize import padded_batches, tokenize_plain, tokenize_sft
from emjax.directions.sources import ablation_from_spec
from emjax.interventions import Interventions
from emjax.interventions import arithmetic as A
from emjax.metrics import sweeps as SW
from emjax.model.attention import resolve_attention
from emjax.model.mesh_plan import fetch, mesh_context, mesh_of, replicate
from emjax.timings import in_phase


def _describe(iv: Interventions) -> dict:
    """The columns every table repeats: kind, layers, the multiplier folded into the norm
    ("alpha": steering alpha, or the LoRA scale alpha/sqrt(r) or alpha/r), and which norm
    `norm` is (`emjax.interventions.arithmetic.norm_kind`)."""
    if iv.lora is not None and iv.steer is not None:
        kind, layers, alpha = "lora+steering", iv.lora.layers, iv.lora.scale
    elif iv.steer is not None:
        kind, layers, alpha = "steering", iv.steer.layers, iv.steer.alpha
    else:
        kind, layers, alpha = "lora", iv.lora.layers, iv.lora.scale
    return {"kind": kind, "layer": ",".join(map(str, layers)), "alpha": alpha, "norm_kind": A.norm_kind(iv)}


def _realised_norms(versions: A.Versions, c) -> np.ndarray:
    """[K] update norms of the versions as built (checks the targets; upstream's random baseline
    missed its matched norm)."""
    return A.version_norms(versions, c.chunk)


@in_phase("data")
def _row_batches(model: LoadedModel, c) -> list[dict]:
    convs = read_chat_jsonl(resolve_data_spec(c.data.train, c.data.dir))
    idx = np.random.default_rng(c.data.seed).permutation(len(convs))[: c.data.n_rows]
    rows = tokenize_sft([convs[i] for i in idx], model.tokenizer, c.data.max_len, on_template_error="skip",
                        loss_tokens=c.data.loss_tokens).rows
    return padded_batches(rows, c.data.batch_size)


@in_phase("data")
def _corpus_batches(model: LoadedModel, c) -> list[dict]:
    s = c.significance
    if s.stream:
        texts = stream_fineweb(s.n_docs, s.max_chars, s.seed)
    else:
        texts = load_fineweb_texts(s.corpus, s.n_docs, s.max_chars, s.seed)
    rows = tokenize_plain(texts, model.tokenizer, s.max_len)
    return padded_batches(rows, c.data.batch_size)


def _ablation(model: LoadedModel, c):
    """The config's `ablation` spec as a DirectionAblation (None when unset)."""
    spec = c.get("ablation")
    return ablation_from_spec(spec, model.cfg) if spec else None


def _mean_over_batches(stacked: Interventions | A.Versions, model: LoadedModel, batches: list[dict], metric: str,
                       c) -> np.ndarray:
    """[K] token-weighted mean loss of every version over `batches`, on the weights' mesh (if any)."""
    mesh = mesh_of(model.weights)
    ablation = replicate(_ablation(model, c), mesh)

    def one(b):
        versions, rows, context = SW.place_sweep(
            stacked, {k: b[k] for k in ("tokens", "mask", "targets", "loss_mask")}, mesh)
        with mesh_context(context):
            return fetch(SW.sweep_losses(versions, model.weights, model.cfg, rows["tokens"], rows["mask"],
                                         metric=metric, targets=rows["targets"], loss_mask=rows["loss_mask"],
                                         chunk=c.chunk, loss_chunk=c.loss_chunk, ablation=ablation,
                                         attention=resolve_attention("auto", model.cfg)))
    return np.asarray(SW.batched_rows(one, batches, metric))


def efficiency(model: LoadedModel, ivs: dict[str, Interventions], c: ml_collections.ConfigDict) -> pd.DataFrame:
    """Training loss of every intervention rescaled to multiples of its trained update norm (and,
    with `efficiency.equal_norm`, to the others' trained norms). One row per (intervention, version).

    Norm: `update_norm` (LoRA ||scale·BA||_F, steering ||alpha·v||; column `norm_kind`). Rescaling
    multiplies B / v, so the update scales linearly: upstream's two LoRA sweeps (rescale to a
    multiple of the norm; multiply B by a factor) are one family here, one sweep over
    `efficiency.lora_scales` (upstream's 21 factors) for LoRA and `efficiency.scales` for steering.
    `realised_norm` is each version's norm as built.
    """
    batches = _row_batches(model, c)
    trained = {k: float(A.update_norm(v)) for k, v in ivs.items()}
    records = []
    for label, iv in tqdm(ivs.items(), desc="efficiency", unit="intervention"):
        scales = c.efficiency.lora_scales if iv.lora is not None else c.efficiency.scales
        norms = [s * trained[label] for s in scales]
        if c.efficiency.equal_norm:
            norms += [n for k, n in trained.items() if k != label]
        versions = A.rescaled_versions(iv, norms)
        losses = _mean_over_batches(versions, model, batches, "ce", c)
        for n, r, loss in zip(norms, _realised_norms(versions, c), losses):
            records.append({"intervention": label, "sweep": "rescale", "norm": n, "realised_norm": float(r),
                            "scale": n / trained[label] if trained[label] > 0 else np.nan,
                            "loss": float(loss), "loss_tokens": c.data.loss_tokens, **_describe(iv)})
    df = pd.DataFrame(records)
    df["efficiency_ratio"] = df["loss"] / np.where(df["norm"] > 0, df["norm"] ** 2, np.nan)
    return df


def stability(model: LoadedModel, ivs: dict[str, Interventions], c: ml_collections.ConfigDict) -> pd.DataFrame:
    """Training loss under orthogonal noise of fraction eps, per seed, relative to the trained and
    the zero intervention. One row per (intervention, eps, seed).

    LoRA noise per `stability.lora_noise` ("update": on the update, norm kept; "per_matrix":
    upstream's A and B each; see `emjax.interventions.arithmetic`), steering noise on v. Column
    `noise` names it, `norm` is the trained update norm, `perturbed_norm` each version's.
    """
    mode = c.stability.lora_noise
    if mode not in A.LORA_NOISE:
        raise ValueError(f"stability.lora_noise must be one of {A.LORA_NOISE}, got {mode!r}")
    batches = _row_batches(model, c)
    records = []
    for label, iv in tqdm(ivs.items(), desc="stability", unit="intervention"):
        versions, ee, ss = A.perturbed_versions(iv, list(c.stability.eps), list(range(c.stability.seeds)), mode)
        ends = A.stack_trees([iv, A.tree_scale(iv, 0.0)])
        l_orig, l_base = _mean_over_batches(ends, model, batches, "ce", c)
        losses = _mean_over_batches(versions, model, batches, "ce", c)
        norm = float(A.update_norm(iv))
        for e, s, loss, pn in zip(ee, ss, losses, _realised_norms(versions, c)):
            records.append({"intervention": label, "eps": float(e), "seed": int(s), "loss": float(loss),
                            "loss_orig": float(l_orig), "loss_base": float(l_base), "norm": norm,
                            "perturbed_norm": float(pn), "noise": mode if iv.lora is not None else "vector",
                            "loss_tokens": c.data.loss_tokens, **_describe(iv)})
    df = pd.DataFrame(records)
    df["relative_increase"] = (df["loss"] - df["loss_orig"]) / (df["loss_base"] - df["loss_orig"])
    return df


def significance(model: LoadedModel, ivs: dict[str, Interventions], c: ml_collections.ConfigDict
                 ) -> pd.DataFrame:
    """KL(chat || intervened) on FineWeb text at a range of update norms, for every intervention and
    for norm-matched random directions. One row per (intervention, norm).

    Random baselines have the structure of the first intervention: steering a Gaussian v, LoRA
    Gaussian A and B; both rescaled (via v / B) to the same `update_norm` targets as the trained
    ones. `realised_norm` is each version's norm as built.
    """
    batches = _corpus_batches(model, c)
    s = c.significance
    top = max(float(A.update_norm(v)) for v in ivs.values())
    norms = [n * top for n in s.norms] if s.norms_relative else list(s.norms)
    sets = dict(ivs)
    first = next(iter(ivs.values()))
    for r in range(s.n_random):  # norm-matched random directions, same structure as the first
        sets[f"random{r}"] = A.random_like(first, jax.random.PRNGKey(1000 + r))
    records = []
    for label, iv in tqdm(sets.items(), desc="significance", unit="intervention"):
        versions = A.rescaled_versions(iv, norms)
        kls = _mean_over_batches(versions, model, batches, "kl", c)
        for n, r, kl in zip(norms, _realised_norms(versions, c), kls):
            records.append({"intervention": label, "random": label.startswith("random"), "norm": n,
                            "realised_norm": float(r), "kl": float(kl), **_describe(iv)})
    return pd.DataFrame(records)
