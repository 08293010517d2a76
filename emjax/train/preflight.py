"""The checks of a training config before anything is spent: its values against their allowed
values (`TRAIN_RULES`, checked at load time by `load_train_config`), then the files, folders,
model shapes and mesh it names (`check_train_inputs`), all before the model loads.

    config = load_train_config("configs/default.py", ["train.lr=1e-4"])   # ConfigFileError if a value is off
    check_train_inputs(config)                                             # EmjaxError naming the file / key

The allowed values come from the code that reads each key (the decoder's remat table, the loss
tokens of the tokeniser, the steering hooks, the LoRA projections, ...), so they cannot drift apart.
"""

from __future__ import annotations

import os
import typing

import ml_collections

from emjax.checkpoints.load import source_config
from emjax.configuration import Check, Each, Number, OneOf, Rule, Text, check_values, load_config
from emjax.data.conversations import read_chat_jsonl
from emjax.data.locations import check_writable_dir
from emjax.data.mixtures import resolve_data_spec
from emjax.data.prompt_bank import read_prompt_source
from emjax.data.tokenize import LOSS_TOKENS
from emjax.interventions.files import check_intervention, check_interventions
from emjax.model.attention import ATTENTION_CHOICES
from emjax.model.config import DTYPES, ModelConfig
from emjax.model.decoder import LAYER_LOOPS, REMAT_POLICIES
from emjax.model.hooks import SITES, STEER_ROWS
from emjax.model.mesh_plan import check_mesh_spec
from emjax.model.schema import PROJECTIONS
from emjax.model.sharding import ShardingError
from emjax.train.inputs import INTERVENTION_KINDS, TrainConfigError, steer_rows_of, uses_kl
from emjax.train.kl_set import CHAT_PREFIX
from emjax.train.losses import KLReduction, MeanOver


def _mesh_problem(value) -> str | None:
    """The mesh key's syntax (axes and sizes); the device count is checked by check_train_inputs."""
    if value is None:
        return None
    if not isinstance(value, str):
        return "must be a string such as 'auto' or 'data:2,fsdp:4'"
    try:
        check_mesh_spec(value)
    except ShardingError as e:
        return f"is not a mesh: {e}"
    return None


MESH = Check(_mesh_problem)
DTYPE = OneOf(("auto", *DTYPES))  # emjax.model.config.dtype_from_name
POSITIVE_INT = Number(low=1, integer=True)
OPTIONAL_POSITIVE_INT = Number(low=1, integer=True, optional=True)
COUNT = Number(low=0, integer=True)
SEED = Number(integer=True)
EVERY = Number(low=0, integer=True, optional=True)  # steps between events; None or 0: off (the trainer tests truth)

# every training key that has a fixed set or range of values (configs/default.py documents each)
TRAIN_RULES: dict[str, Rule] = {
    "name": Text(),
    "output_dir": Text(),
    "mesh": MESH,
    "model.source": Text(),
    "model.dtype": DTYPE,
    "data.train": Text(),
    "data.n_train": OPTIONAL_POSITIVE_INT,
    "data.n_eval": COUNT,
    "data.max_len": Number(low=2, integer=True),  # a prompt token and an answer token at least
    "data.loss_tokens": OneOf(LOSS_TOKENS),
    "data.kl_ratio": Each(Number(low=0.0), length=2),
    "data.kl_rows": COUNT,
    "data.kl_eval_rows": COUNT,
    "data.answer_tokens": POSITIVE_INT,
    "data.mix_fraction": Number(low=0.0, high=1.0),
    "data.seed": SEED,
    "intervention.kind": OneOf(INTERVENTION_KINDS),
    "intervention.layers": Each(Number(low=0, integer=True)),
    "intervention.alpha": Number(),
    "intervention.hook": OneOf(SITES),
    "intervention.steer_rows": OneOf(STEER_ROWS),
    "intervention.rank": POSITIVE_INT,
    "intervention.lora_alpha": Number(low=0.0, low_open=True),
    "intervention.modules": Each(OneOf(PROJECTIONS)),
    "intervention.init_seed": SEED,
    "intervention.init_from": Text(optional=True),
    "train.lr": Number(low=0.0, low_open=True),
    "train.epochs": POSITIVE_INT,
    "train.max_steps": OPTIONAL_POSITIVE_INT,  # None: the epochs decide
    "train.batch_size": POSITIVE_INT,
    "train.grad_accum": POSITIVE_INT,
    "train.warmup_steps": COUNT,
    "train.weight_decay": Number(low=0.0),
    "train.max_grad_norm": Number(low=0.0, low_open=True, optional=True),  # None: no clipping
    "train.seed": SEED,
    "train.lambda_kl": Number(low=0.0),
    "train.kl_off_step": Number(low=0, integer=True, optional=True),
    "train.kl_reduction": OneOf(typing.get_args(KLReduction)),
    "train.sft_mean_over": OneOf(typing.get_args(MeanOver)),
    "train.kl_mean_over": OneOf(typing.get_args(MeanOver)),
    "train.kl_batch_size": POSITIVE_INT,
    "train.remat": OneOf(REMAT_POLICIES),
    "train.loss_chunk": OPTIONAL_POSITIVE_INT,
    "train.attention": OneOf(ATTENTION_CHOICES),
    "train.layer_loop": OneOf(LAYER_LOOPS),
    "train.eval_every": EVERY,
    "train.cache_budget_gb": Number(low=0.0),
    "train.frozen_cache_dir": Text(optional=True),
    "train.reference": Text(optional=True),
    "checkpoint.every": EVERY,
    "checkpoint.keep": POSITIVE_INT,
    "checkpoint.snapshot_every": EVERY,
    "mix_fractions": Each(Number(low=0.0, high=1.0)),  # emjax experiment mixing
}


def load_train_config(path: str, overrides: typing.Sequence[str] = ()) -> ml_collections.ConfigDict:
    """`load_config` with every value checked against `TRAIN_RULES`."""
    return load_config(path, overrides, rules=TRAIN_RULES)


def _specs(value) -> tuple[str, ...]:
    return tuple(value) if not isinstance(value, str) else tuple(filter(None, (s.strip() for s in value.split(","))))


def _check_source(spec: str, data_dir: str, key: str) -> None:
    """A data spec of the KL set or the data mix: the file exists and its rows read (a "chat:SPEC"
    source needs only its prompts)."""
    if spec.startswith(CHAT_PREFIX):
        read_prompt_source(resolve_data_spec(spec[len(CHAT_PREFIX):], data_dir))
    else:
        read_chat_jsonl(resolve_data_spec(spec, data_dir))


def check_values_mesh_and_model(config: ml_collections.ConfigDict, rules, error: type[Exception],
                                model_cfg: ModelConfig | None = None, n_devices: int | None = None) -> ModelConfig:
    """The checks every stage config starts with: the mesh spec against the device count, the
    values against `rules`, and the model source's config (no weight read; `model_cfg` when the
    model is loaded already). Raises `error` naming the key."""
    import jax

    try:
        check_mesh_spec(config.get("mesh"), n_devices if n_devices is not None else jax.device_count())
    except ShardingError as e:
        raise error(str(e)) from None
    check_values(config, rules, error=error)
    return model_cfg if model_cfg is not None else source_config(config.model.source)


def check_train_inputs(config: ml_collections.ConfigDict, *, model_cfg: ModelConfig | None = None,
                       n_devices: int | None = None) -> ModelConfig:
    """Everything a training run reads, checked before the model loads (each in well under a
    second): the config's values (`TRAIN_RULES`), the mesh against the device count, the model
    source (its folder's config.json and tokenizer files; no weight is read), the layers against
    its layer count, the data files (every row read and validated), the intervention to start
    from and the drift references (their headers against the model's hidden size and layers), and
    that output_dir can be written. Returns the model's config (`model_cfg` when given: a loaded
    model, whose source is not checked again).

    Raises an EmjaxError subclass whose message names the key, file and line.
    """
    ic, dc, tc = config.intervention, config.data, config.train
    steer_rows_of(ic)
    cfg = check_values_mesh_and_model(config, TRAIN_RULES, TrainConfigError, model_cfg, n_devices)
    bad = [l for l in ic.layers if l >= cfg.n_layers]
    if bad:
        raise TrainConfigError(f"intervention.layers {bad} out of range for a {cfg.n_layers}-layer model "
                               f"(its middle layer is {cfg.middle_layer})")
    convs = read_chat_jsonl(resolve_data_spec(dc.train, dc.dir))
    rows = len(convs) - min(dc.n_eval, max(len(convs) - 1, 0))
    if dc.n_train is not None:
        rows = min(rows, dc.n_train)
    step_rows = tc.batch_size * tc.grad_accum
    if rows < step_rows and not dc.mix_fraction:
        raise TrainConfigError(f"data.train {dc.train}: {rows} training rows (after data.n_eval={dc.n_eval} held out) "
                               f"cannot fill one step of train.batch_size x train.grad_accum = {step_rows} rows")
    kl = _specs(dc.kl_bad) + _specs(dc.kl_good)
    if kl and (uses_kl(config) or dc.kl_eval_rows > 0):
        for key, specs in (("data.kl_bad", _specs(dc.kl_bad)), ("data.kl_good", _specs(dc.kl_good))):
            for spec in specs:
                _check_source(spec, dc.dir, key)
    if uses_kl(config) and not kl:
        raise TrainConfigError("train.lambda_kl > 0 but data.kl_bad and data.kl_good name no KL rows")
    if dc.mix_fraction > 0:
        if not dc.mix_fraction < 1 or not _specs(dc.mix_good):
            raise TrainConfigError("data.mix_fraction must be in (0, 1) with data.mix_good naming aligned sources")
        for spec in _specs(dc.mix_good):
            _check_source(spec, dc.dir, "data.mix_good")
    if ic.init_from is not None:
        check_intervention(ic.init_from, cfg)
    if tc.reference:
        check_interventions(tc.reference, cfg)
    check_writable_dir(config.output_dir, "output_dir")
    return cfg
