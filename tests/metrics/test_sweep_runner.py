"""The sweep stage end to end on a tiny model: tables, plots, summaries for all three metrics."""

import json
import os

import jax
import numpy as np
import pandas as pd
import pytest

import paths
from chat_templates import tiny_tokenizer
from hf_reference import build_hf, qwen2_config, to_emjax
from emjax.interventions.files import save_steering
from emjax.data.chat_tokenizer import ChatTokenizer
from emjax.interventions import init_steering
from emjax.checkpoints.load import LoadedModel
from emjax.configuration import load_config
from emjax.metrics.runner import run_sweep

FINEWEB = str(paths.FINEWEB)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = ChatTokenizer.wrap(tiny_tokenizer("qwen2"))
    cfg, w = to_emjax(build_hf(qwen2_config(tied=True, vocab_size=len(tok.hf)), seed=71))
    model = LoadedModel(cfg, w, tok, "tiny", "tiny-qwen2")
    d = tmp_path_factory.mktemp("vectors")
    files = {}
    for i, name in enumerate(("general", "narrow")):
        sv = init_steering(cfg, layers=(1,), alpha=2.0)
        sv = sv.replace(vectors=jax.random.normal(jax.random.PRNGKey(i), sv.vectors.shape) * (1 + i))
        files[name] = str(d / f"{name}.safetensors")
        save_steering(sv, files[name])
    c = load_config(str(paths.CONFIGS / "sweep_default.py"))
    c.output_dir = str(d / "out")
    c.interventions = ",".join(f"{k}={v}" for k, v in files.items())
    c.data.n_rows, c.data.max_len, c.data.batch_size = 6, 96, 4
    c.efficiency.scales = (0.0, 0.5, 1.0, 2.0)
    c.stability.eps, c.stability.seeds = (0.0, 0.5, 1.0), 2
    c.significance.corpus = FINEWEB
    c.significance.n_docs, c.significance.max_len, c.significance.n_random = 3, 64, 2
    c.significance.norms = (0.0, 1.0, 2.0)
    return model, c


def test_efficiency_and_stability(setup):
    model, c = setup
    eff = run_sweep("efficiency", c, model)
    df = pd.read_parquet(eff["files"]["table"])
    assert set(df.intervention) == {"general", "narrow"}
    # 4 scales + the other vector's trained norm, per vector
    assert len(df) == 10 and os.path.exists(eff["files"]["plot"])
    g = df[(df.intervention == "general") & np.isclose(df.scale, 1.0)]
    assert eff["at_trained_norm"]["general"]["loss"] == pytest.approx(float(g.loss.iloc[0]))
    assert set(eff["equal_norm_loss"]["at_norm_of_narrow"]) == {"general", "narrow"}
    st = run_sweep("stability", c, model)
    df = pd.read_csv(st["files"]["csv"])
    assert len(df) == 2 * 3 * 2
    zero = df[df.eps == 0.0]
    np.testing.assert_allclose(zero.relative_increase, 0.0, atol=1e-5)  # eps 0 is the original
    assert json.load(open(os.path.join(c.output_dir, "stability_summary.json")))["kind"] == "stability"


@pytest.mark.skipif(not os.path.exists(FINEWEB), reason="no FineWeb sample in ../shared")
def test_significance(setup):
    model, c = setup
    sig = run_sweep("significance", c, model)
    df = pd.read_parquet(sig["files"]["table"])
    assert set(df.intervention) == {"general", "narrow", "random0", "random1"}
    np.testing.assert_allclose(df[df.norm == 0.0].kl, 0.0, atol=1e-6)  # zero norm is the chat model
    assert (df[df.norm > 0].kl > 0).all()
