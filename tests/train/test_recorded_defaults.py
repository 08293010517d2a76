"""Defaults that must not silently differ from what a run records: the LoRA alpha / rsLoRA pair of
the config reaches adapter_config.json as given, a continued adapter must carry the config's scale,
and sampling stages load in bfloat16 on accelerators (float32 on CPU)."""

import json
import os

import jax
import pytest

from tiny_run import tiny_config, tiny_model as make_tiny_model
from emjax.cli import build_parser
from emjax.model.config import ConfigError, resolve_dtype
from emjax.train.trainer import Trainer, TrainConfigError


@pytest.fixture(scope="module")
def tiny_model():
    return make_tiny_model()


@pytest.mark.parametrize("alpha,rank,rslora", [(8.0, 4, False), (12.0, 4, True)])
def test_lora_run_records_the_configs_alpha_and_rslora(tiny_model, tmp_path, alpha, rank, rslora):
    c = tiny_config(tmp_path, f"lora_{rslora}")
    c.intervention.kind = "lora"
    c.intervention.rank, c.intervention.lora_alpha, c.intervention.rslora = rank, alpha, rslora
    c.train.max_steps = 1
    out = Trainer(c, tiny_model).run()
    with open(os.path.join(out["artefact"], "adapter_config.json")) as f:
        saved = json.load(f)
    # alpha 8, r 4, plain LoRA has scale 2, which rsLoRA alpha 4 would also give: the record must say 8 / plain
    assert (saved["lora_alpha"], saved["use_rslora"], saved["r"]) == (alpha, rslora, rank)


def test_continuing_an_adapter_with_another_scale_is_refused(tiny_model, tmp_path):
    c = tiny_config(tmp_path, "src")
    c.intervention.kind, c.intervention.rank, c.intervention.lora_alpha = "lora", 2, 8.0
    c.train.max_steps = 1
    src = Trainer(c, tiny_model).run()["artefact"]
    d = tiny_config(tmp_path, "cont")
    d.intervention.kind, d.intervention.rank, d.intervention.lora_alpha = "lora", 2, 16.0
    d.intervention.init_from = src
    with pytest.raises(TrainConfigError, match="scale"):
        Trainer(d, tiny_model)
    d.intervention.lora_alpha = 8.0
    assert Trainer(d, tiny_model).params0.lora.scale == pytest.approx(8.0 / 2 ** 0.5)


def test_sampling_dtype_is_bfloat16_on_accelerators(monkeypatch):
    assert resolve_dtype("auto") == ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert resolve_dtype("auto") == "bfloat16"
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert resolve_dtype("auto") == "bfloat16"
    assert resolve_dtype("float32") == "float32"
    with pytest.raises(ConfigError, match="float16"):
        resolve_dtype("float16")
    args = build_parser().parse_args(["generate", "--questions", "q.yaml", "--out", "a.jsonl"])
    assert args.dtype == "auto"
