"""The training loop on a tiny model: resume is bit-identical, KL switch-off, outputs, config overrides."""

import json
import os

import jax
import numpy as np
import pytest

import paths
from tiny_run import DEFAULT, tiny_config as _config, tiny_model as make_tiny_model
from emjax.configuration import ConfigFileError, load_config
from emjax import model as M
from emjax.data.tokenize import pad_batch
from emjax.interventions import Interventions
from emjax.interventions.files import load_steering
from emjax.model.hooks import FirstRowSteering
from emjax.interventions.peft import load_peft_lora
from emjax.timings import KEYS
from emjax.train.trainer import Trainer, TrainConfigError, train

CONFIGS = str(paths.CONFIGS)


@pytest.fixture(scope="module")
def tiny_model():
    return make_tiny_model()


def _vectors(out):
    return load_steering(os.path.join(out, "steering.safetensors")).vectors


def _no_model_loads(monkeypatch):
    """Any model load fails the test (a finished rerun must not load one)."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded")
    import emjax.checkpoints.load as L
    import emjax.train.trainer as T
    monkeypatch.setattr(L, "load_model", refuse)
    monkeypatch.setattr(T, "model_on_mesh", refuse)


def _snapshot(folder):
    return {p: (os.stat(p).st_mtime_ns, open(p, "rb").read())
            for p in (folder / "summary.json", folder / "steering.safetensors", folder / "metrics.jsonl")}


def test_resume_is_bit_identical(tiny_model, tmp_path, monkeypatch):
    full = Trainer(_config(tmp_path, "full", lambda_kl=0.5), tiny_model).run()
    part = Trainer(_config(tmp_path, "part", lambda_kl=0.5), tiny_model)
    assert part.run(stop_at_step=5) == {"stopped_at": 5}  # last checkpoint at step 4
    first_session = json.loads((tmp_path / "part" / "progress.json").read_text())["timings"]
    with pytest.raises(TrainConfigError, match=r"the checkpoint of a run of another config \(train.lambda_kl: 0.5 -> 1.0\)"):
        train(_config(tmp_path, "part", lambda_kl=1.0))  # refused before any model loads
    resumed = Trainer(_config(tmp_path, "part", lambda_kl=0.5), tiny_model).run()
    assert full["steps"] == resumed["steps"] == 8  # 17 rows // (2 x 2) per epoch, 2 epochs
    np.testing.assert_array_equal(np.asarray(_vectors(tmp_path / "full")), np.asarray(_vectors(tmp_path / "part")))
    # the resumed run's summary describes the whole run: the first session's first loss and
    # initial eval (bit-identical to the uninterrupted run's), the seconds of both sessions
    for key in ("train_loss_first", "train_loss_last", "initial_eval", "final_eval"):
        assert resumed[key] == full[key], key
    assert resumed["sessions"] == 2 and full["sessions"] == 1
    assert resumed["seconds"] == pytest.approx(resumed["timings"]["total"], abs=0.1)
    assert resumed["timings"]["total"] > first_session["total"] > 0
    assert resumed["timings"]["compute"] > first_session["compute"]
    # one metrics line per step: the first session's step 5 (after its last checkpoint) was dropped and rewritten
    lines = [json.loads(l) for l in open(tmp_path / "part" / "metrics.jsonl")]
    assert [l["step"] for l in lines if "sft_loss" in l] == list(range(1, 9))
    # the rerun of a finished run: its summary from disk, no model loaded, nothing rewritten
    before = _snapshot(tmp_path / "full")
    assert Trainer(_config(tmp_path, "full", lambda_kl=0.5), tiny_model).run() == full
    _no_model_loads(monkeypatch)
    assert train(_config(tmp_path, "full", lambda_kl=0.5, eval_every=5)) == full  # eval_every: the same run
    assert _snapshot(tmp_path / "full") == before
    with pytest.raises(TrainConfigError, match=r"a finished run of another config \(train.lr: 0.05 -> 0.01\)"):
        train(_config(tmp_path, "full", lambda_kl=0.5, lr=0.01))
    assert full["train_loss_last"] < full["train_loss_first"]
    assert set(full["timings"]) == set(KEYS) and full["timings"]["compile"] > 0  # the step's compile, on CPU too
    assert full["config"]["train"]["lambda_kl"] == 0.5
    assert full["final_eval"]["eval_kl_ood"] > 0 and full["initial_eval"]["eval_kl_ood"] == 0.0
    lines = [json.loads(l) for l in open(tmp_path / "full" / "metrics.jsonl")]
    assert [l["step"] for l in lines if "sft_loss" in l] == list(range(1, 9))
    assert all(l["skipped"] == 0.0 for l in lines if "skipped" in l)


def test_sharded_training_matches_single_device(tiny_model, tmp_path):
    one = Trainer(_config(tmp_path, "one", lambda_kl=0.5, max_steps=3), tiny_model)
    c = _config(tmp_path, "mesh", lambda_kl=0.5, max_steps=3)
    c.mesh = "data:2,fsdp:2,tensor:2"
    sharded = Trainer(c, tiny_model)
    assert len(sharded.model.weights.layers.q_proj.sharding.device_set) == 8
    s1, s8 = one.run(), sharded.run()
    np.testing.assert_allclose(np.asarray(_vectors(tmp_path / "mesh")), np.asarray(_vectors(tmp_path / "one")),
                               rtol=1e-4, atol=1e-6)
    assert s8["final_eval"]["eval_loss"] == pytest.approx(s1["final_eval"]["eval_loss"], rel=1e-5)
    with pytest.raises(TrainConfigError, match="mesh"):
        c.mesh = "data:3"
        Trainer(c, tiny_model)


def test_kl_switch_off_and_lora_output(tiny_model, tmp_path):
    c = _config(tmp_path, "lora", lambda_kl=1.0, kl_off_step=3)
    c.intervention.kind = "lora"
    c.intervention.layers = (0, 1, 2, 3)
    c.intervention.modules = ("q_proj", "down_proj")
    c.intervention.rank = 2
    c.intervention.lora_alpha = 4.0
    c.train.lr = 1e-2
    s = Trainer(c, tiny_model).run()
    lines = [json.loads(l) for l in open(tmp_path / "lora" / "metrics.jsonl") if "lambda_kl" in l]
    assert [l["lambda_kl"] for l in lines] == [1.0] * 3 + [0.0] * (s["steps"] - 3)
    assert all("kl" in l for l in lines[:3]) and not any("kl" in l for l in lines[3:])
    lora = load_peft_lora(tmp_path / "lora" / "lora", tiny_model.cfg)
    assert lora.layers == tuple(range(tiny_model.cfg.n_layers)) and lora.rank == 2
    assert s["shared_prefix_layers"] == 0


def test_config_errors(tiny_model, tmp_path):
    with pytest.raises(ConfigFileError, match="unknown config key 'train.lrr'; did you mean 'train.lr'"):
        load_config(DEFAULT, ["train.lrr=1"])
    with pytest.raises(ConfigFileError, match="unknown config key 'trian.lr'; did you mean 'train.lr'"):
        load_config(DEFAULT, ["trian.lr=1"])
    with pytest.raises(ConfigFileError, match="bad value for 'train.epochs'"):
        load_config(DEFAULT, ["train.epochs=abc"])
    with pytest.raises(ConfigFileError, match="does not exist"):
        load_config(str(tmp_path / "nope.py"))
    c = load_config(DEFAULT, ["train.lr=1", "intervention.layers=(1,2)", "train.frozen_cache=false",
                              "train.max_steps=7"])
    assert c.train.lr == 1.0 and c.intervention.layers == (1, 2) and c.train.frozen_cache is False
    assert c.train.max_steps == 7 and load_config(DEFAULT).train.max_steps is None
    with pytest.raises(AttributeError):  # locked: a typo in code fails too
        c.train.lrr = 1.0
    c3 = _config(tmp_path, "bad3")
    c3.intervention.layers = (9,)
    with pytest.raises(TrainConfigError, match=r"intervention.layers \[9\] out of range for a 4-layer"):
        Trainer(c3, tiny_model)
    c2 = _config(tmp_path, "bad2", lambda_kl=1.0)
    c2.data.kl_bad = c2.data.kl_good = ()
    with pytest.raises(TrainConfigError, match="lambda_kl > 0"):
        Trainer(c2, tiny_model)


def test_config_overrides_set_none():
    """key=None turns a field off (config_flags alone would read the string 'None')."""
    from emjax.train.preflight import TRAIN_RULES
    c = load_config(DEFAULT, ["train.remat=None", "train.loss_chunk=None"], TRAIN_RULES)
    assert c.train.remat is None and c.train.loss_chunk is None
    with pytest.raises(AttributeError):  # still locked
        c.train.lrr = 1.0
    paper = os.path.join(os.path.dirname(DEFAULT), "paper_14b.py:lora_r32,narrow,medical")
    assert load_config(paper).train.remat == "dots" and load_config(paper, ["train.remat=None"]).train.remat is None
    with pytest.raises(ConfigFileError, match="unknown config key 'train.rematt'; did you mean 'train.remat'"):
        load_config(DEFAULT, ["train.rematt=None"])
    with pytest.raises(ConfigFileError, match="bad value for 'train': None would replace a whole section"):
        load_config(DEFAULT, ["train=None"])
    with pytest.raises(ConfigFileError, match=r"train.remat='none' is not one of .*None is written None"):
        load_config(DEFAULT, ["train.remat=none"], TRAIN_RULES)


def _eval_loss(model, rows, iv):
    """Token-mean CE of `rows` under `iv`, from the full forward (no prefix sharing)."""
    b = pad_batch(rows)
    logits = M.forward(model.weights, model.cfg, b["tokens"], b["mask"], interventions=iv)
    logz = jax.nn.logsumexp(logits, -1)
    tgt = np.take_along_axis(np.asarray(logits), b["targets"][..., None], -1)[..., 0]
    return float(np.sum((np.asarray(logz) - tgt) * b["loss_mask"]) / b["loss_mask"].sum())


def test_steer_rows_first_trains_on_row_zero_and_evaluates_every_row(tiny_model, tmp_path):
    c = _config(tmp_path, "first", lambda_kl=0.5, max_steps=3)
    c.intervention.steer_rows = "first"
    t = Trainer(c, tiny_model)
    assert t.opts.steer_rows == "first" and t.k == 3  # the frozen cache's prefix path
    s = t.run()
    assert s["steer_rows"] == "first" and any("steer_rows='first'" in n for n in s["notes"])
    iv = Interventions(steer=load_steering(os.path.join(c.output_dir, "steering.safetensors")))
    every, first = (_eval_loss(tiny_model, t.data.eval, x) for x in (iv, FirstRowSteering(iv)))
    assert abs(every - first) > 1e-3 * every  # the two evals are told apart
    assert s["final_eval"]["eval_loss"] == pytest.approx(every, rel=1e-5)
    a = Trainer(_config(tmp_path, "all", lambda_kl=0.5, max_steps=3), tiny_model).run()
    assert a["steer_rows"] == "all" and not any("steer_rows='first'" in n for n in a["notes"])
    diff = np.abs(np.asarray(_vectors(tmp_path / "all")) - np.asarray(_vectors(tmp_path / "first"))).max()
    assert diff > 1e-3 * np.abs(np.asarray(_vectors(tmp_path / "all"))).max()


def test_steer_rows_errors_before_the_model_loads(tmp_path):
    c = _config(tmp_path, "lora_first")
    c.model.source = str(tmp_path / "no_such_model")  # never read: the config is refused first
    c.intervention.kind = "lora"
    c.intervention.steer_rows = "first"
    with pytest.raises(TrainConfigError, match=r"intervention.steer_rows='first' .* steering only; "
                                               r"intervention.kind is 'lora'"):
        Trainer(c)
    c.intervention.kind = "steering"
    c.intervention.steer_rows = "row0"
    with pytest.raises(TrainConfigError, match=r"intervention.steer_rows='row0' is not one of 'all', 'first'"):
        Trainer(c)


# files for a family of runs, loaded as FILE.py:ARG (every argument: tests/test_paper_configs.py)
ARGUMENTS = {"sweep_paper.py": ":steering,medical", "gemma_9b.py": ":steering,narrow,medical",
             "paper_14b.py": ":steering,narrow,medical"}


@pytest.mark.parametrize("path", sorted(p for p in os.listdir(CONFIGS) if p.endswith(".py") and p != "__init__.py"))
def test_shipped_configs_load(path):
    full = os.path.join(CONFIGS, path) + ARGUMENTS.get(path, "")
    if path.startswith("sweep_"):
        c = load_config(full, ["data.n_rows=7"])
        assert c.data.n_rows == 7 and "=" in c.interventions
        return
    if path.startswith("technical_data"):  # the technical example's data builder (emjax technical build-data)
        c = load_config(full, ["seed=3"])
        assert c.seed == 3 and c.out.endswith(".jsonl") and c.system_prompt
        return
    c = load_config(full, ["train.lr=0.001"])
    assert c.train.lr == 0.001 and c.intervention.kind in ("steering", "lora")


def test_attention_auto_resolves_on_cpu(tiny_model):
    from emjax.model.attention import resolve_attention
    assert resolve_attention("auto", tiny_model.cfg) == "xla"  # CPU backend in tests
    assert resolve_attention("cudnn", tiny_model.cfg) == "cudnn"
