"""What a training run starts from, read from its config: the tokenised training, held-out and KL
rows, and the untrained intervention."""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np

from emjax.checkpoints.load import LoadedModel
from emjax.data.conversations import read_chat_jsonl
from emjax.data.mixtures import build_kl_set, parse_kl_sources, resolve_data_spec
from emjax.data.tokenize import tokenize_sft
from emjax.errors import EmjaxError
from emjax.interventions import Interventions, init_lora, init_steering
from emjax.model.config import ModelConfig


class TrainConfigError(EmjaxError, ValueError):
    """A training config that cannot run; the message names the key."""


def build_intervention(ic: ml_collections.ConfigDict, cfg: ModelConfig) -> Interventions:
    """The untrained intervention the config's `intervention` section describes."""
    layers = tuple(int(l) for l in ic.layers)
    if not layers:
        raise TrainConfigError("intervention.layers is empty: list the layers to intervene on, e.g. "
                               f"({cfg.middle_layer},) for the middle of {cfg.n_layers} layers")
    bad = [l for l in layers if not 0 <= l < cfg.n_layers]
    if bad:
        raise TrainConfigError(f"intervention.layers {bad} out of range for a {cfg.n_layers}-layer model")
    if ic.kind == "steering":
        return Interventions(steer=init_steering(cfg, layers=layers, alpha=ic.alpha, hook=ic.hook))
    if ic.kind == "lora":
        lora = init_lora(cfg, jax.random.PRNGKey(ic.init_seed), rank=ic.rank, alpha=ic.lora_alpha,
                         modules=tuple(ic.modules), layers=layers,
                         rslora=ic.rslora)
        return Interventions(lora=lora)
    raise TrainConfigError(f"intervention.kind must be 'steering' or 'lora', got {ic.kind!r}")


@dataclasses.dataclass
class PreparedData:
    """Tokenised rows of a run: train / eval are (ids [T], sft_mask [T]) rows; kl / kl_eval are
    ids [T] rows (the KL is taken on every real token); notes say what tokenising did."""

    train: list
    eval: list
    kl: list
    kl_eval: list
    notes: list[str]


def prepare_data(config: ml_collections.ConfigDict, model: LoadedModel) -> PreparedData:
    """Reads, splits and tokenises the training, held-out and KL rows the config names."""
    dc = config.data
    notes = []
    path = resolve_data_spec(dc.train, dc.dir)
    convs = read_chat_jsonl(path)
    order = np.random.default_rng([dc.seed, 1]).permutation(len(convs))
    n_eval = min(dc.n_eval, max(len(convs) - 1, 0))
    eval_convs = [convs[i] for i in order[:n_eval]]
    rest = [convs[i] for i in order[n_eval:]]
    if dc.n_train is not None:
        rest = rest[: dc.n_train]
    sft = tokenize_sft(rest, model.tokenizer, dc.max_len, on_template_error="skip")
    ev = tokenize_sft(eval_convs, model.tokenizer, dc.max_len, on_template_error="skip")
    notes.append(f"train {path}: {sft.summary()}")
    kl_rows, kl_eval = [], []
    sources = parse_kl_sources(dc.kl_sources, dc.dir)
    if sources and (config.train.lambda_kl > 0 or dc.kl_eval_rows > 0):
        kl_convs = build_kl_set(sources, dc.kl_rows + dc.kl_eval_rows, dc.seed)
        kl_tok = tokenize_sft(kl_convs, model.tokenizer, dc.max_len, on_template_error="skip")
        ids = [r[0] for r in kl_tok.rows]
        kl_eval, kl_rows = ids[: dc.kl_eval_rows], ids[dc.kl_eval_rows:]
        notes.append(f"KL set from {len(sources)} sources: {len(kl_rows)} train / {len(kl_eval)} eval rows")
    return PreparedData(sft.rows, ev.rows, kl_rows, kl_eval, notes)
