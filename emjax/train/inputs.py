"""What a training run starts from, read from its config: the tokenised training, held-out and KL
rows, and the untrained intervention."""

from __future__ import annotations

import dataclasses
import math

import jax
import ml_collections
import numpy as np

from emjax.checkpoints.load import LoadedModel
from emjax.data.conversations import read_chat_jsonl
from emjax.data.mixtures import resolve_data_spec
from emjax.data.tokenize import LOSS_TOKENS, tokenize_sft
from emjax.errors import EmjaxError
from emjax.interventions import Interventions, init_lora, init_steering
from emjax.model.config import ModelConfig
from emjax.model.hooks import STEER_ROWS, SteerRows
from emjax.train.kl_set import compose_kl_set, normalise_prompt, user_prompt


class TrainConfigError(EmjaxError, ValueError):
    """A training config that cannot run; the message names the key."""


INTERVENTION_KINDS = ("steering", "lora")  # intervention.kind: what build_intervention builds


def uses_kl(config: ml_collections.ConfigDict) -> bool:
    """Whether a run trains with the KL term: the one rule (train.lambda_kl > 0) that decides if
    the KL rows are drawn, batched, cached and planned for; `kl_weight` gives its weight per step."""
    return config.train.lambda_kl > 0


def kl_weight(config: ml_collections.ConfigDict, step: int) -> float:
    """lambda_KL at `step`: 0 without KL (`uses_kl`) or from train.kl_off_step on, else train.lambda_kl."""
    tc = config.train
    if not uses_kl(config) or (tc.kl_off_step is not None and tc.kl_off_step <= step):
        return 0.0
    return float(tc.lambda_kl)


def rows_over_data(config: ml_collections.ConfigDict, data: int) -> str | None:
    """Why the micro-batches of `config` cannot split over a `data` axis of this size (None when
    they can), with the batch sizes that would."""
    tc, kl = config.train, uses_kl(config)
    bad = [(k, tc[k]) for k in ("batch_size",) + (("kl_batch_size",) if kl else ()) if tc[k] % data]
    if not bad:
        return None
    fix = ", ".join(f"train.{k}={-(-v // data) * data}" for k, v in bad)
    rows, kl_rows = tc.batch_size * tc.grad_accum, tc.kl_batch_size * tc.grad_accum
    hint = ""
    if tc.grad_accum > 1 and rows % data == 0 and (not kl or kl_rows % data == 0):
        # the same step: both losses are normalised by the whole step's token counts
        more = f" train.kl_batch_size={kl_rows}" if kl else ""
        hint = f" (or train.batch_size={rows}{more} train.grad_accum=1: the same rows per step)"
    return (f"{', '.join(f'train.{k}={v}' for k, v in bad)} rows per micro-batch do not split over data:{data}; "
            f"set {fix}{hint}, or a mesh with a smaller data axis")


def steer_rows_of(ic: ml_collections.ConfigDict) -> SteerRows:
    """intervention.steer_rows, checked: which rows of a training micro-batch the steering vector
    reaches ("first" reproduces upstream's steering trainer, so it means nothing for LoRA)."""
    rows = ic.steer_rows
    if rows not in STEER_ROWS:
        raise TrainConfigError(f"intervention.steer_rows must be one of {STEER_ROWS}, got {rows!r}")
    if rows == "first" and ic.kind != "steering":
        raise TrainConfigError(f"intervention.steer_rows='first' reproduces upstream's steering-vector hook (row 0 "
                               f"of each batch) and applies to steering only; intervention.kind is {ic.kind!r} "
                               f"(set intervention.steer_rows='all')")
    return rows


def checked_loss_tokens(dc: ml_collections.ConfigDict) -> str:
    """The config's `data.loss_tokens`, checked (`emjax.data.tokenize.LOSS_TOKENS`)."""
    value = dc.loss_tokens
    if value not in LOSS_TOKENS:
        raise TrainConfigError(f"data.loss_tokens must be one of {LOSS_TOKENS}, got {value!r}")
    return value


def build_intervention(ic: ml_collections.ConfigDict, cfg: ModelConfig) -> Interventions:
    """The untrained intervention the config's `intervention` section describes."""
    layers = tuple(int(l) for l in ic.layers)
    if not layers:
        raise TrainConfigError("intervention.layers is empty: list the layers to intervene on, e.g. "
                               f"({cfg.middle_layer},) for the middle of {cfg.n_layers} layers")
    bad = [l for l in layers if not 0 <= l < cfg.n_layers]
    if bad:
        raise TrainConfigError(f"intervention.layers {bad} out of range for a {cfg.n_layers}-layer model")
    if ic.init_from is not None:
        return _load_start(ic, cfg, layers)
    if ic.kind == "steering":
        return Interventions(steer=init_steering(cfg, layers=layers, alpha=ic.alpha, hook=ic.hook))
    if ic.kind == "lora":
        lora = init_lora(cfg, jax.random.PRNGKey(ic.init_seed), rank=ic.rank, alpha=ic.lora_alpha,
                         modules=tuple(ic.modules), layers=layers,
                         rslora=ic.rslora)
        return Interventions(lora=lora)
    raise TrainConfigError(f"intervention.kind must be one of {INTERVENTION_KINDS}, got {ic.kind!r}")


def _load_start(ic: ml_collections.ConfigDict, cfg: ModelConfig, layers: tuple[int, ...]) -> Interventions:
    """A trained intervention to continue from (upstream's KL removal starts from the trained narrow
    adapter / vector: `adapter_to_load`, `initial_steering_vector_path`). It must be what the config
    describes, so that the run's config stays a true record of what was trained."""
    from emjax.interventions.files import load_intervention

    iv = load_intervention(ic.init_from, cfg)
    got = "steering" if iv.steer is not None else "lora"
    if got != ic.kind:
        raise TrainConfigError(f"intervention.init_from {ic.init_from} holds a {got} intervention, "
                               f"but intervention.kind is {ic.kind!r}")
    if got == "steering":
        s = iv.steer
        names = "(layers, alpha, hook)"
        found, want = (s.layers, s.alpha, s.hook), (layers, float(ic.alpha), ic.hook)
    else:
        lo = iv.lora
        names = "(layers, modules, rank, scale)"  # scale: lora_alpha / sqrt(rank) with rslora, else / rank
        scale = float(ic.lora_alpha) / (math.sqrt(int(ic.rank)) if ic.rslora else int(ic.rank))
        found = (lo.layers, tuple(lo.modules), lo.rank, round(lo.scale, 6))
        want = (layers, tuple(sorted(ic.modules)), int(ic.rank), round(scale, 6))
    if found != want:
        raise TrainConfigError(f"intervention.init_from {ic.init_from} has {names} = {found}, the config "
                               f"says {want}: set the intervention section to match the file")
    return iv


@dataclasses.dataclass
class PreparedData:
    """Tokenised rows of a run: train / eval are (ids [T], sft_mask [T]) rows, the mask as
    `data.loss_tokens` says; kl / kl_eval are ids [T] rows (the KL is taken on every real token);
    notes say what tokenising did; prompts holds each part's user prompts ("train" (data mix
    included), "eval", "kl", "kl_eval"), row by row, for overlap checks."""

    train: list
    eval: list
    kl: list
    kl_eval: list
    notes: list[str]
    prompts: dict[str, list[str]] = dataclasses.field(default_factory=dict)


def chat_answerer(model: LoadedModel, max_new_tokens: int, batch_size: int = 16):
    """The frozen chat model answering prompts greedily (ours: deterministic, its most likely answer,
    so the KL term pins the model's own behaviour), as `emjax.train.kl_set.Answerer`."""
    from tqdm.auto import tqdm

    from emjax.model import sampling as S

    tok = model.tokenizer

    def answer(prompts):
        out = []
        for i in tqdm(range(0, len(prompts), batch_size), desc="chat answers for the KL set", unit="batch"):
            ids = S.generate(model.weights, model.cfg, [tok.prompt_ids(p) for p in prompts[i: i + batch_size]],
                             max_new_tokens=max_new_tokens, temperature=0.0, stop_ids=tok.stop_ids,
                             vocab_limit=tok.vocab_size)
            out.extend(tok.decode(o).strip() for o in ids)
        return out

    return answer


def _specs(value) -> tuple[str, ...]:
    return tuple(value) if not isinstance(value, str) else tuple(filter(None, (s.strip() for s in value.split(","))))


def prepare_data(config: ml_collections.ConfigDict, model: LoadedModel) -> PreparedData:
    """Reads, splits and tokenises the training, held-out and KL rows the config names.

    The KL set is drawn first, refusing every prompt of data.train; a data mix (data.mix_fraction)
    is drawn after it, refusing those prompts and every prompt of the KL set (train and eval rows).
    So no KL row shares a prompt with a training row, and a mix run's KL rows are the same rows as
    those of the general and narrow runs with the same data section (its out-of-domain KL is
    measured on what they are measured on, whatever the fraction)."""
    dc = config.data
    which = checked_loss_tokens(dc)
    notes = []
    path = resolve_data_spec(dc.train, dc.dir)
    convs = read_chat_jsonl(path)
    order = np.random.default_rng([dc.seed, 1]).permutation(len(convs))
    n_eval = min(dc.n_eval, max(len(convs) - 1, 0))
    eval_convs = [convs[i] for i in order[:n_eval]]
    rest = [convs[i] for i in order[n_eval:]]
    if dc.n_train is not None:
        rest = rest[: dc.n_train]
    training_prompts = [user_prompt(c) for c in convs]
    provenance = {"model": model.name, "model_source": model.source, "decoding": "greedy",
                  "max_new_tokens": dc.answer_tokens}
    compose = dict(data_dir=dc.dir, answerer=chat_answerer(model, dc.answer_tokens), answer_cache=dc.cache_dir,
                   provenance=provenance)
    kl_convs, kl_picks = [], []
    bad, good = _specs(dc.kl_bad), _specs(dc.kl_good)
    if (bad or good) and (uses_kl(config) or dc.kl_eval_rows > 0):
        kl_convs, kl_picks = compose_kl_set(bad, good, tuple(dc.kl_ratio), dc.kl_rows + dc.kl_eval_rows, dc.seed,
                                            exclude_prompts=training_prompts, **compose)
    if dc.mix_fraction > 0:  # the data-mixing baseline: aligned rows of other domains in the training set
        if not 0 < dc.mix_fraction < 1 or not _specs(dc.mix_good):
            raise TrainConfigError("data.mix_fraction must be in (0, 1) with data.mix_good naming aligned sources")
        n_mix = int(round(dc.mix_fraction * len(rest) / (1 - dc.mix_fraction)))
        kl_prompts = [user_prompt(c) for c in kl_convs]
        mix, picks = compose_kl_set((), _specs(dc.mix_good), (0.0, 1.0), n_mix, dc.seed + 7,
                                    exclude_prompts=training_prompts + kl_prompts, **compose)
        rest = rest + mix
        notes.append(f"data mix: {n_mix} aligned rows ({dc.mix_fraction:.0%} of training) from "
                     + ", ".join(f"{p.spec} ({p.n_rows})" for p in picks)
                     + f"; {sum(p.n_excluded for p in picks)} rows of those sources not drawn: their prompt is one "
                       f"of the KL set's {len(set(map(normalise_prompt, kl_prompts)))} prompts ({len(kl_convs)} rows, "
                       "train and eval) or a training prompt")
    sft = tokenize_sft(rest, model.tokenizer, dc.max_len, on_template_error="skip", loss_tokens=which)
    ev = tokenize_sft(eval_convs, model.tokenizer, dc.max_len, on_template_error="skip", loss_tokens=which)
    notes.append(f"train {path}: {sft.summary()}")
    prompts = {"train": [user_prompt(rest[i]) for i in sft.source_index],
               "eval": [user_prompt(eval_convs[i]) for i in ev.source_index]}
    kl_rows, kl_eval = [], []
    if kl_convs:
        kl_tok = tokenize_sft(kl_convs, model.tokenizer, dc.max_len, on_template_error="skip")
        ids = [r[0] for r in kl_tok.rows]
        kl_eval, kl_rows = ids[: dc.kl_eval_rows], ids[dc.kl_eval_rows:]
        kl_prompts = [user_prompt(kl_convs[i]) for i in kl_tok.source_index]
        prompts.update(kl_eval=kl_prompts[: dc.kl_eval_rows], kl=kl_prompts[dc.kl_eval_rows:])
        notes.append(f"KL set, bad:good {dc.kl_ratio[0]:g}:{dc.kl_ratio[1]:g}: {len(kl_rows)} train / "
                     f"{len(kl_eval)} eval rows from " + ", ".join(f"{p.kind} {p.spec} ({p.n_rows})" for p in kl_picks))
    return PreparedData(sft.rows, ev.rows, kl_rows, kl_eval, notes, prompts)
