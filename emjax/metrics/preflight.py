"""The checks of a sweep config before the model loads: its values against their allowed values
(`SWEEP_RULES`, at load time by `load_sweep_config`), then the mesh, the model source, the
interventions' headers, the training rows and the FineWeb corpus it names (`check_sweep_inputs`).

    c = load_sweep_config("configs/sweep_embedded.py", ["significance.norms=(0.0, 1.0)"])
    check_sweep_inputs(c, ("efficiency", "significance"))
"""

from __future__ import annotations

from typing import Sequence

import ml_collections

from emjax.configuration import Each, Number, OneOf, Rule, Text, load_config
from emjax.data.conversations import read_chat_jsonl
from emjax.data.fineweb import load_fineweb_texts
from emjax.data.locations import check_writable_dir
from emjax.data.mixtures import resolve_data_spec
from emjax.data.tokenize import LOSS_TOKENS
from emjax.errors import EmjaxError
from emjax.interventions.arithmetic import LORA_NOISE
from emjax.interventions.files import check_interventions
from emjax.model.config import ModelConfig
from emjax.train.preflight import (COUNT, DTYPE, MESH, OPTIONAL_POSITIVE_INT, POSITIVE_INT, SEED,
                                   check_values_mesh_and_model)

FINITE = Number()


class SweepConfigError(EmjaxError, ValueError):
    """A sweep that cannot run as configured."""


# every sweep key that has a fixed set or range of values (configs/sweep_default.py documents each)
SWEEP_RULES: dict[str, Rule] = {
    "name": Text(),
    "output_dir": Text(),
    "model.source": Text(),
    "model.dtype": DTYPE,
    "mesh": MESH,
    "interventions": Text(),
    "data.train": Text(),
    "data.n_rows": POSITIVE_INT,
    "data.seed": SEED,
    "data.max_len": Number(low=2, integer=True),
    "data.loss_tokens": OneOf(LOSS_TOKENS),
    "data.batch_size": POSITIVE_INT,
    "ablation": Text(optional=True),
    "chunk": OPTIONAL_POSITIVE_INT,
    "loss_chunk": OPTIONAL_POSITIVE_INT,
    "efficiency.scales": Each(FINITE),
    "efficiency.lora_scales": Each(FINITE),
    "stability.eps": Each(Number(low=0.0)),
    "stability.seeds": POSITIVE_INT,
    "stability.lora_noise": OneOf(LORA_NOISE),
    "significance.corpus": Text(),
    "significance.n_docs": POSITIVE_INT,
    "significance.max_chars": POSITIVE_INT,
    "significance.max_len": Number(low=2, integer=True),
    "significance.seed": SEED,
    "significance.norms": Each(Number(low=0.0)),  # multiples of a norm, or norms: never negative
    "significance.n_random": COUNT,
}


def load_sweep_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """`load_config` with every value checked against `SWEEP_RULES`."""
    return load_config(path, overrides, rules=SWEEP_RULES)


def check_sweep_inputs(c: ml_collections.ConfigDict, kinds: Sequence[str], *, model_cfg: ModelConfig | None = None,
                       n_devices: int | None = None, interventions: bool = True) -> ModelConfig:
    """What the sweeps `kinds` read, checked before the model loads: the values (`SWEEP_RULES`), the
    mesh against the device count, the model source (no weight read), every intervention's header
    against the model's hidden size and layers (`interventions=False`: they are made by an earlier
    stage), the training rows, the FineWeb corpus for significance, and that output_dir can be
    written. Returns the model's config. Raises an EmjaxError naming the key or file."""
    cfg = check_values_mesh_and_model(c, SWEEP_RULES, SweepConfigError, model_cfg, n_devices)
    if interventions:
        check_interventions(c.interventions, cfg)
        if c.get("ablation"):  # built now from its files and the config (no weights), then again by the sweep
            from emjax.directions.sources import ablation_from_spec
            ablation_from_spec(c.ablation, cfg)
    if set(kinds) & {"efficiency", "stability"}:
        read_chat_jsonl(resolve_data_spec(c.data.train, c.data.dir))
    if "significance" in kinds and not c.significance.stream:
        s = c.significance
        load_fineweb_texts(s.corpus, s.n_docs, s.max_chars, s.seed)
    check_writable_dir(c.output_dir, "output_dir")
    return cfg
