"""The paper's run kinds on a tiny model: KL removal from a trained intervention with drift
logging and snapshots, replicate seeds, and the data-mixing baseline."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tiny_run import tiny_config, tiny_model as make_tiny_model
from emjax.interventions import Interventions
from emjax.interventions.files import load_intervention, load_steering
from emjax.interventions.similarity import effect_cosine
from emjax.train.replicates import replicate_config, spread, train_replicates
from emjax.train.trainer import Trainer, TrainConfigError


@pytest.fixture(scope="module")
def tiny_model():
    return make_tiny_model()


def _metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(l) for l in f if l.strip()]


def test_kl_removal_starts_from_the_vector_and_logs_drift(tiny_model, tmp_path):
    narrow = Trainer(tiny_config(tmp_path, "narrow", lambda_kl=2.0), tiny_model).run()
    general = Trainer(tiny_config(tmp_path, "general"), tiny_model).run()
    c = tiny_config(tmp_path, "removal", lambda_kl=0.0)
    c.intervention.init_from = narrow["artefact"]
    c.train.reference = f"general={general['artefact']},narrow={narrow['artefact']}"
    c.checkpoint.snapshot_every = 2
    t = Trainer(c, tiny_model)
    v0 = load_steering(narrow["artefact"]).vectors
    np.testing.assert_array_equal(np.asarray(t.params0.steer.vectors), np.asarray(v0))
    removal = t.run()
    rows = [r for r in _metrics(c.output_dir) if "cos_general" in r]
    assert rows[0]["step"] == 0 and rows[0]["cos_narrow"] == pytest.approx(1.0, abs=1e-6)
    lrs = [r["lr"] for r in _metrics(c.output_dir) if "lr" in r]
    assert lrs[0] == pytest.approx(0.0) and max(lrs) <= c.train.lr * (1 + 1e-6)  # a fresh warmup schedule
    # the logged drift equals a recomputation from the snapshots written along the way
    g = load_intervention(general["artefact"], tiny_model.cfg)
    snaps = sorted(os.listdir(os.path.join(c.output_dir, "snapshots")))
    assert snaps == [f"step_{s:06d}" for s in range(2, removal["steps"] + 1, 2)]
    by_step = {r["step"]: r for r in rows}
    for name in snaps:
        step = int(name.split("_")[1])
        if step in by_step:
            iv = load_intervention(os.path.join(c.output_dir, "snapshots", name, "steering.safetensors"),
                                   tiny_model.cfg)
            assert by_step[step]["cos_general"] == pytest.approx(float(effect_cosine(iv, g)), abs=1e-5)
    assert removal["init_from"] == narrow["artefact"]


def test_init_from_must_match_the_config(tiny_model, tmp_path):
    run = Trainer(tiny_config(tmp_path, "src"), tiny_model).run()
    c = tiny_config(tmp_path, "mismatch")
    c.intervention.init_from = run["artefact"]
    c.intervention.layers = (1,)
    with pytest.raises(TrainConfigError, match="layers"):
        Trainer(c, tiny_model)
    c.intervention.layers = (2,)
    c.intervention.kind = "lora"
    with pytest.raises(TrainConfigError, match="holds a steering intervention"):
        Trainer(c, tiny_model)


def test_replicates_differ_by_seed_and_report_spread(tiny_model, tmp_path):
    c = tiny_config(tmp_path, "rep")
    c.train.max_steps = 3
    c.intervention.kind = "lora"
    c.intervention.rank = 2
    c.intervention.init_seed = 1000
    c0 = replicate_config(c, 2)
    assert (c0.train.seed, c0.intervention.init_seed, c0.output_dir) == (2, 1002, os.path.join(c.output_dir, "seed2"))
    out = train_replicates(c, [0, 1], tiny_model)
    a = load_intervention(out["runs"][0]["artefact"], tiny_model.cfg).lora.a["down_proj"]
    b = load_intervention(out["runs"][1]["artefact"], tiny_model.cfg).lora.a["down_proj"]
    assert not np.allclose(np.asarray(a), np.asarray(b))  # separate inits
    losses = [r["final_eval"]["eval_loss"] for r in out["runs"].values()]
    assert out["spread"]["eval_loss"]["mean"] == pytest.approx(np.mean(losses))
    assert out["spread"]["eval_loss"]["std"] == pytest.approx(np.std(losses, ddof=1))
    with open(os.path.join(c.output_dir, "replicates.json")) as f:
        assert json.load(f)["seeds"] == [0, 1]


def test_spread():
    x = list(np.random.default_rng().normal(size=5))
    s = spread(x + [None])
    assert s["n"] == 5 and s["min"] == min(x) and s["std"] == pytest.approx(np.std(x, ddof=1))
    assert spread([None]) == {"n": 0}


def test_data_mix_adds_aligned_rows(tiny_model, tmp_path):
    c = tiny_config(tmp_path, "mix")
    n_plain = len(Trainer(c, tiny_model).data.train)
    c.data.mix_good = ("sample:good_financial", "sample:good_sports")
    c.data.mix_fraction = 0.25
    t = Trainer(c, tiny_model)
    assert n_plain < len(t.data.train) <= n_plain + 8  # 8 / 32 = 25% aligned rows (some may not fit max_len)
    assert any("data mix: 8 aligned rows" in n for n in t.data.notes)
    c.data.mix_fraction = 1.0
    with pytest.raises(TrainConfigError, match="mix_fraction"):
        Trainer(c, tiny_model)


def test_data_mix_shares_no_prompt_with_the_kl_set(tiny_model, tmp_path):
    """The mix draws from the KL set's own good sources (paper_14b.data_mix); no KL row, trained on
    or held out, may share a prompt with a training row, and the held-out KL rows stay those of the
    run without a mix (so the out-of-domain KL of every fraction is measured on the same rows)."""
    from emjax.train.inputs import prepare_data
    from emjax.train.kl_set import normalise_prompt

    c = tiny_config(tmp_path, "mixkl")
    plain = prepare_data(c, tiny_model)
    c.data.mix_good = c.data.kl_good
    c.data.mix_fraction = 0.5
    d = prepare_data(c, tiny_model)
    assert len(d.prompts["train"]) > len(plain.prompts["train"])  # 24 aligned rows (some may not fit max_len)
    training = set(map(normalise_prompt, d.prompts["train"] + d.prompts["eval"]))
    for part in ("kl", "kl_eval"):
        assert len(d.prompts[part]) == len(plain.prompts[part]) > 0
        assert not training & set(map(normalise_prompt, d.prompts[part])), part
    assert d.prompts["kl_eval"] == plain.prompts["kl_eval"]
    for a, b in zip(d.kl_eval, plain.kl_eval):
        np.testing.assert_array_equal(a, b)
    note = next(n for n in d.notes if n.startswith("data mix: 24 aligned rows"))
    assert "not drawn: their prompt is one of the KL set's" in note and "(16 rows, train and eval)" in note
