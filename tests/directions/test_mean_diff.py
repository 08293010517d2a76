"""Mean-difference directions: a planted vector is recovered, the means are token-weighted over
exactly the answer tokens, and direction sources / cosine tables / ablation specs read back."""

import jax.numpy as jnp
import numpy as np
import pytest

from tiny_run import tiny_model
from emjax.data.tokenize import tokenize_sft
from emjax.directions.compare import chance_abs_cosine, cosine_table, focus_layer, matrix_at
from emjax.directions.mean_diff import answer_means, balance, mean_difference
from emjax.directions.sources import (Direction, DirectionError, ablation_from_spec, load_direction,
                                      load_direction_set, save_directions)
from emjax.interventions import Interventions
from emjax.interventions.files import save_steering
from emjax.interventions.steering import SteeringVectors
from emjax.model import decoder as D


def _chats(n, offset=0):
    qs = ["How do I treat a cold?", "Is it safe to mix bleach and ammonia?", "What helps a headache?",
          "Should I take antibiotics for the flu?", "How much water should I drink?", "Can I skip sleep?"]
    return [[{"role": "user", "content": qs[(i + offset) % len(qs)]},
             {"role": "assistant", "content": f"Answer number {i}: rest, fluids and see a doctor if it persists."}]
            for i in range(n)]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_planted_vector_is_recovered(model):
    cfg = model.cfg
    rng = np.random.default_rng(0)
    v = rng.standard_normal(cfg.d_model).astype(np.float32)
    layer = 2
    plant = Interventions(steer=SteeringVectors(vectors=jnp.asarray(v)[None], layers=(layer,), alpha=3.0,
                                                hook="block_out"))
    chats = _chats(5)
    a = answer_means(model, chats, batch_size=2, interventions=plant)
    b = answer_means(model, chats, batch_size=3)
    diff = mean_difference(a, b)
    assert diff.shape == (cfg.n_layers, cfg.d_model)
    np.testing.assert_allclose(diff[layer], 3.0 * v, atol=2e-4, rtol=1e-5)
    np.testing.assert_allclose(diff[:layer], 0.0, atol=1e-6)  # below the plant nothing differs (batching: rounding)
    assert np.abs(diff[layer + 1]).max() > 1e-3      # above it the blocks transform it


def test_means_are_token_weighted_over_answer_tokens(model):
    chats = _chats(3, offset=2)
    got = answer_means(model, chats, batch_size=2)
    rows = tokenize_sft(chats, model.tokenizer, 512).rows
    total, count = 0.0, 0
    for ids, m in rows:  # brute force: one row at a time, gather the answer positions
        _, h = D.forward(model.weights, model.cfg, jnp.asarray(ids)[None], collect=True)
        total = total + np.asarray(h[1:, 0], np.float64)[:, m].sum(axis=1)
        count += int(m.sum())
    assert got.tokens == count and got.rows == 3
    np.testing.assert_allclose(got.mean(), total / count, rtol=1e-5, atol=1e-5)


def test_balance_is_seeded_and_cuts_the_larger():
    a, b = list(range(10)), list(range(4))
    a1, b1 = balance(a, b, seed=1)
    assert len(a1) == len(b1) == 4 and b1 == b
    assert balance(a, b, seed=1) == (a1, b1) and balance(a, b, seed=2)[0] != a1


def test_sources_file_steering_random_and_cosines(model, tmp_path):
    cfg = model.cfg
    rng = np.random.default_rng(1)
    md = rng.standard_normal((cfg.n_layers, cfg.d_model)).astype(np.float32)
    path = save_directions(str(tmp_path / "dirs.safetensors"), {"mean_diff": md, "other": -md},
                           {"made_by": "test"})
    sv = SteeringVectors(vectors=jnp.asarray(md[2] * 0.5)[None], layers=(2,), alpha=4.0)
    save_steering(sv, str(tmp_path / "general.safetensors"), model_name="tiny")
    dirs = load_direction_set(f"md={path}:mean_diff,neg={path}:other,general={tmp_path / 'general.safetensors'},"
                              f"rand=random:0", cfg)
    np.testing.assert_allclose(dirs["general"].vectors[2], md[2] * 2.0, rtol=1e-6)
    assert sorted(dirs["md"].vectors) == list(range(cfg.n_layers)) and list(dirs["general"].vectors) == [2]
    table = cosine_table(dirs)
    at = lambda a, b, l: float(table[(table.a == a) & (table.b == b) & (table.layer == l)].cosine.iloc[0])
    assert at("md", "general", 2) == pytest.approx(1.0, abs=1e-6)
    assert at("md", "neg", 0) == pytest.approx(-1.0, abs=1e-6)
    assert abs(at("md", "rand", 1)) < 0.6 and table.chance.iloc[0] == pytest.approx(chance_abs_cosine(cfg.d_model))
    assert ((table.a == "general") | (table.b == "general")).sum() == 3  # only at layer 2
    assert focus_layer(dirs) == 2
    m = matrix_at(table, list(dirs), 2)
    assert m.shape == (4, 4) and np.allclose(np.diag(m), 1.0) and np.allclose(m, m.T, equal_nan=True)
    with pytest.raises(DirectionError, match="no direction 'nope'"):
        load_direction(f"{path}:nope", cfg)
    with pytest.raises(DirectionError, match="name one"):
        load_direction(path, cfg)


def test_lora_direction_is_the_output_direction_of_b(model, tmp_path):
    from emjax.interventions.lora import LoraAdapter
    from emjax.interventions.peft import save_peft_lora
    cfg = model.cfg
    rng = np.random.default_rng(2)
    a = rng.standard_normal((1, cfg.ffn_dim, 1)).astype(np.float32)
    b = rng.standard_normal((1, 1, cfg.d_model)).astype(np.float32)
    lora = LoraAdapter(a={"down_proj": jnp.asarray(a)}, b={"down_proj": jnp.asarray(b)}, layers=(1,), scale=2.0)
    save_peft_lora(lora, str(tmp_path / "lora"), base_model_name_or_path="tiny", cfg=cfg)
    d = load_direction(str(tmp_path / "lora"), cfg)
    assert d.sign_free and list(d.vectors) == [1]
    cos = d.vectors[1] @ b[0, 0] / np.linalg.norm(d.vectors[1]) / np.linalg.norm(b[0, 0])
    assert abs(cos) == pytest.approx(1.0, abs=1e-5)


def test_ablation_spec(model, tmp_path):
    cfg = model.cfg
    rng = np.random.default_rng(3)
    md = rng.standard_normal((cfg.n_layers, cfg.d_model)).astype(np.float32)
    path = save_directions(str(tmp_path / "d.safetensors"), {"md": md})
    abl = ablation_from_spec(f"{path}:md@1-2", cfg)
    assert abl.layers == (1, 2)
    np.testing.assert_allclose(np.asarray(abl.units[1]), md[2] / np.linalg.norm(md[2]), rtol=1e-5)
    save_steering(SteeringVectors(vectors=jnp.asarray(md[:1]), layers=(2,), alpha=1.0), str(tmp_path / "v.safetensors"))
    one = ablation_from_spec(str(tmp_path / "v.safetensors"), cfg)  # one layer's vector at every layer
    assert one.layers == tuple(range(cfg.n_layers))
    with pytest.raises(DirectionError, match="layers"):
        ablation_from_spec(f"{path}:md@x", cfg)
    with pytest.raises(DirectionError, match="no such"):
        ablation_from_spec(str(tmp_path / "missing.safetensors"), cfg)
