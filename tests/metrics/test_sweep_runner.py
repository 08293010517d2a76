"""The sweep stage end to end on a tiny model: tables, plots, summaries for all three metrics, for
steering vectors and LoRA adapters (tables against the plain-loop reference)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import paths
from chat_templates import tiny_tokenizer
from hf_reference import build_hf, qwen2_config, to_emjax
from emjax.interventions.files import save_steering
from emjax.data.chat_tokenizer import ChatTokenizer
from emjax.interventions import Interventions, init_lora, init_steering
from emjax.interventions import arithmetic as A
from emjax.interventions.files import load_interventions
from emjax.interventions.peft import save_peft_lora
from emjax.metrics import sweeps as SW
from emjax.metrics import tables as T
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
    # the norm is the applied vector alpha·v; the losses are those of v rescaled as before
    ivs = load_interventions(c.interventions, model.cfg)
    sv = ivs["general"].steer
    assert float(g.norm.iloc[0]) == pytest.approx(sv.alpha * float(jnp.linalg.norm(sv.vectors)), rel=1e-5)
    assert set(df.norm_kind) == {A.STEERING_NORM} and eff["comparability"]["ok"]
    np.testing.assert_allclose(df.realised_norm, df.norm, rtol=1e-5, atol=1e-6)
    gen = df[df.intervention == "general"]
    raw = A.stack_trees([A.tree_scale(ivs["general"], float(s)) for s in gen.scale])
    old = T._mean_over_batches(raw, model, T._row_batches(model, c), "ce", c)
    np.testing.assert_allclose(gen.loss, old, rtol=1e-5)
    st = run_sweep("stability", c, model)
    df = pd.read_csv(st["files"]["csv"])
    assert len(df) == 2 * 3 * 2
    zero = df[df.eps == 0.0]
    np.testing.assert_allclose(zero.relative_increase, 0.0, atol=1e-5)  # eps 0 is the original
    assert set(df.noise) == {"vector"}
    np.testing.assert_allclose(df.perturbed_norm, df.norm, rtol=1e-5)
    assert json.load(open(os.path.join(c.output_dir, "stability_summary.json")))["kind"] == "stability"


def test_efficiency_of_vectors_with_equal_norms(setup, tmp_path):
    """Two vectors of the same norm (a few Adam steps from zero give equal norms): each one's
    equal-norm point of the other is its own scale 1, and the summary still has one trained row
    per vector (it was a TypeError in `emjax main --quick`)."""
    model, c = setup
    c = c.copy_and_resolve_references()
    files = {}
    for i, name in enumerate(("general", "narrow")):
        sv = init_steering(model.cfg, layers=(1,), alpha=2.0)
        v = jax.random.normal(jax.random.PRNGKey(10 + i), sv.vectors.shape)
        files[name] = str(tmp_path / f"{name}.safetensors")
        save_steering(sv.replace(vectors=v / jnp.linalg.norm(v)), files[name])
    c.output_dir = str(tmp_path / "out")
    c.interventions = ",".join(f"{k}={v}" for k, v in files.items())
    eff = run_sweep("efficiency", c, model)
    assert set(eff["at_trained_norm"]) == {"general", "narrow"}
    assert eff["at_trained_norm"]["general"]["norm"] == pytest.approx(eff["at_trained_norm"]["narrow"]["norm"])
    assert set(eff["equal_norm_loss"]["at_norm_of_general"]) == {"general", "narrow"}


@pytest.mark.skipif(not os.path.exists(FINEWEB), reason="no FineWeb sample in ../shared")
def test_significance(setup):
    model, c = setup
    sig = run_sweep("significance", c, model)
    df = pd.read_parquet(sig["files"]["table"])
    assert set(df.intervention) == {"general", "narrow", "random0", "random1"}
    np.testing.assert_allclose(df[df.norm == 0.0].kl, 0.0, atol=1e-6)  # zero norm is the chat model
    assert (df[df.norm > 0].kl > 0).all()


# ---------------------------------------------------------------------------------------------
# LoRA


def _lora(cfg, init_seed: int, b_seed: int, alpha: float = 4.0):
    """An adapter from init seed `init_seed` (A) with a random B standing in for training."""
    ad = init_lora(cfg, jax.random.PRNGKey(init_seed), rank=2, alpha=alpha, modules=("down_proj", "q_proj", "v_proj"),
                   layers=(0, 2))
    keys = jax.random.split(jax.random.PRNGKey(b_seed), len(ad.b))
    return ad.replace(b={m: 0.3 * jax.random.normal(k, b.shape) for (m, b), k in zip(sorted(ad.b.items()), keys)})


@pytest.fixture(scope="module")
def lora_setup(setup, tmp_path_factory):
    model, c = setup
    d = tmp_path_factory.mktemp("lora")
    folders = {}
    for name, seed, b_seed, alpha in (("general", 1, 11, 4.0), ("narrow", 2, 12, 4.0), ("twin", 1, 13, 4.0),
                                      ("alpha16", 3, 14, 16.0)):
        folders[name] = str(d / name)  # "twin" shares general's init seed; "alpha16" another alpha
        save_peft_lora(_lora(model.cfg, seed, b_seed, alpha), folders[name], alpha=alpha, rslora=True, cfg=model.cfg)
    c = c.copy_and_resolve_references()
    c.output_dir = str(d / "out")
    c.interventions = f"general={folders['general']},narrow={folders['narrow']}"
    c.efficiency.lora_scales = (0.0, 0.5, 1.0, 2.0)
    return model, c, folders


def _brute_norm(iv: Interventions) -> float:
    lo = iv.lora
    return float(np.sqrt(sum(np.sum((lo.scale * np.einsum("nir,nro->nio", np.float64(lo.a[m]), np.float64(lo.b[m])))
                                    ** 2) for m in lo.modules)))


def _loop_table_losses(model, c, iv_stack) -> np.ndarray:
    """The table's token-weighted mean over row batches, by the loop of full forward passes."""
    total, weight = 0.0, 0.0
    for b in T._row_batches(model, c):
        w = float(np.sum(b["loss_mask"]))
        total = total + w * SW.loop_losses(iv_stack, model.weights, model.cfg, jnp.asarray(b["tokens"]),
                                           jnp.asarray(b["mask"]), targets=jnp.asarray(b["targets"]),
                                           loss_mask=jnp.asarray(b["loss_mask"]))
        weight += w
    return total / weight


def test_lora_tables_use_the_update_norm_and_match_the_loop(lora_setup):
    model, c, _ = lora_setup
    ivs = load_interventions(c.interventions, model.cfg)
    eff = run_sweep("efficiency", c, model)
    df = pd.read_parquet(eff["files"]["table"])
    assert len(df) == 2 * (4 + 1) and set(df.norm_kind) == {A.LORA_NORM}
    assert "norm: ||scale·BA||_F (effective update)" in eff["note"]
    for label, iv in ivs.items():
        d = df[df.intervention == label]
        t = d[np.isclose(d.scale, 1.0)]
        assert float(t.norm.iloc[0]) == pytest.approx(_brute_norm(iv), rel=1e-5)
        np.testing.assert_allclose(d.realised_norm, d.norm, rtol=1e-5, atol=1e-6)
        ref = _loop_table_losses(model, c, A.rescale_to_norms(iv, list(d.norm)))
        np.testing.assert_allclose(d.loss, ref, rtol=1e-4)
    comp = eff["comparability"]
    assert comp["ok"] and comp["warnings"] == [] and abs(comp["a_cosine"]["general|narrow"]) < 0.5

    st = run_sweep("stability", c, model)
    df = pd.read_parquet(st["files"]["table"])
    assert set(df.noise) == {"update"} and st["noise"] == {"general": "update", "narrow": "update"}
    np.testing.assert_allclose(df.perturbed_norm, df.norm, rtol=1e-5)  # the update's norm is kept
    np.testing.assert_allclose(df[df.eps == 0.0].relative_increase, 0.0, atol=1e-5)
    g = df[df.intervention == "general"]
    stacked, _, _ = A.perturbation_grid(ivs["general"], list(c.stability.eps), list(range(c.stability.seeds)))
    np.testing.assert_allclose(g.loss, _loop_table_losses(model, c, stacked), rtol=1e-4)


def test_lora_stability_per_matrix_mode(lora_setup):
    model, c, _ = lora_setup
    c = c.copy_and_resolve_references()
    c.stability.lora_noise = "per_matrix"
    st = run_sweep("stability", c, model)
    df = pd.read_parquet(st["files"]["table"])
    assert set(df.noise) == {"per_matrix"}
    np.testing.assert_allclose(df[df.eps == 0.0].relative_increase, 0.0, atol=1e-5)
    full = df[df.eps == 1.0]
    assert not np.allclose(full.perturbed_norm, full.norm, rtol=1e-3)  # A and B each, not the update
    c.stability.lora_noise = "full"
    with pytest.raises(ValueError, match="lora_noise"):
        run_sweep("stability", c, model)


def test_lora_comparability_warnings_are_printed(lora_setup, capsys):
    model, c, folders = lora_setup
    c = c.copy_and_resolve_references()
    c.interventions = ",".join(f"{k}={folders[k]}" for k in ("general", "twin", "alpha16"))
    c.efficiency.lora_scales, c.efficiency.equal_norm = (1.0,), False
    eff = run_sweep("efficiency", c, model)
    comp = eff["comparability"]
    assert not comp["ok"]
    text = " ".join(comp["warnings"])
    assert "general and twin are identical" in text and "shared init" in text
    assert "LoRA scale (alpha/sqrt(r) or alpha/r) differs" in text
    err = capsys.readouterr().err
    assert "warning: sweep efficiency:" in err and "shared init" in err


@pytest.mark.skipif(not os.path.exists(FINEWEB), reason="no FineWeb sample in ../shared")
def test_lora_significance_random_baselines_at_matched_update_norm(lora_setup):
    model, c, _ = lora_setup
    c = c.copy_and_resolve_references()
    c.significance.n_random, c.significance.norms = 1, (0.0, 0.5, 1.0)
    sig = run_sweep("significance", c, model)
    df = pd.read_parquet(sig["files"]["table"])
    assert set(df.norm_kind) == {A.LORA_NORM} and set(df.intervention) == {"general", "narrow", "random0"}
    np.testing.assert_allclose(df.realised_norm, df.norm, rtol=1e-5, atol=1e-6)  # random ones too
    np.testing.assert_allclose(df[df.norm == 0.0].kl, 0.0, atol=1e-6)


def test_comparability_of_steering_and_mixed_sets(setup):
    from emjax.metrics.runner import comparability
    model, _ = setup
    sv = init_steering(model.cfg, layers=(1,), alpha=2.0)
    sv = sv.replace(vectors=jax.random.normal(jax.random.PRNGKey(0), sv.vectors.shape))
    same = comparability({"g": Interventions(steer=sv), "n": Interventions(steer=sv.replace(vectors=-sv.vectors))})
    assert same["ok"] and same["norm_kind"] == {"g": A.STEERING_NORM, "n": A.STEERING_NORM}
    other = comparability({"g": Interventions(steer=sv), "n": Interventions(steer=sv.replace(alpha=8.0))})
    assert not other["ok"] and "steering alpha differs" in other["warnings"][0]
    mixed = comparability({"s": Interventions(steer=sv), "l": Interventions(lora=_lora(model.cfg, 1, 2))})
    assert not mixed["ok"] and "different kinds" in mixed["warnings"][0]


def test_across_seeds_pools_replicates():
    from emjax.metrics.runner import across_seeds
    rng = np.random.default_rng()
    g, n = rng.normal(size=3), rng.normal(size=3)
    summary = {"mean_relative_increase": {**{f"general_seed{i}": float(x) for i, x in enumerate(g)},
                                          **{f"narrow_seed{i}": float(x) for i, x in enumerate(n)}},
               "at_trained_norm": {f"general_seed{i}": {"loss": float(x), "norm": 1.0} for i, x in enumerate(g)}}
    labels = [f"{k}_seed{i}" for k in ("general", "narrow") for i in range(3)]
    out = across_seeds(summary, labels)
    assert out["mean_relative_increase"]["general"]["mean"] == pytest.approx(g.mean())
    assert out["mean_relative_increase"]["narrow"]["std"] == pytest.approx(np.std(n, ddof=1))
    assert out["loss_at_trained_norm"]["general"]["n"] == 3
    assert across_seeds(summary, ["general", "narrow"]) is None  # no replicates


def test_sweep_reuses_finished_kinds_and_recomputes_changed_ones(setup, tmp_path, capsys):
    import shutil
    import emjax.metrics.runner as R
    from emjax.timings import KEYS
    model, c0 = setup
    c = c0.copy_and_resolve_references()
    c.output_dir = str(tmp_path / "sweeps")
    copies = {}
    for label, path in (x.split("=") for x in c.interventions.split(",")):  # this test retrains one
        copies[label] = str(tmp_path / os.path.basename(path))
        shutil.copy(path, copies[label])
    c.interventions = ",".join(f"{k}={v}" for k, v in copies.items())
    c.efficiency.scales, c.efficiency.equal_norm = (0.0, 1.0), False
    c.stability.eps, c.stability.seeds = (0.0, 1.0), 1
    kinds = ("efficiency", "stability")
    first = R.sweep(c, kinds, model)
    assert set(first["efficiency"]["timings"]) == set(KEYS) and first["stability"]["inputs"]["kind"] == "stability"

    def files(kind):
        return {p: (os.stat(p).st_mtime_ns, open(p, "rb").read())
                for p in (os.path.join(c.output_dir, kind + ext) for ext in (".parquet", ".csv", ".png", "_summary.json"))}
    before = {k: files(k) for k in kinds}

    def refuse(*a, **k):
        raise AssertionError("a model was loaded")
    with pytest.MonkeyPatch.context() as mp:  # a finished rerun: the summaries from disk, no model loaded
        mp.setattr(R, "model_on_mesh", refuse)
        assert R.sweep(c, kinds) == json.loads(json.dumps(first))
    assert {k: files(k) for k in kinds} == before
    # another stability setting: only stability is computed again, and the line says why
    c.stability.eps = (0.0, 0.5)
    R.sweep(c, kinds, model)
    assert files("efficiency") == before["efficiency"] and files("stability") != before["stability"]
    assert "stability.eps: [0.0, 1.0] -> [0.0, 0.5]" in capsys.readouterr().out
    # a retrained vector (same path, other contents): efficiency is computed again
    sv = init_steering(model.cfg, layers=(1,), alpha=2.0)
    save_steering(sv.replace(vectors=jax.random.normal(jax.random.PRNGKey(9), sv.vectors.shape)), copies["narrow"])
    again = R.sweep(c, ("efficiency",), model)["efficiency"]
    assert again["at_trained_norm"]["narrow"]["norm"] != first["efficiency"]["at_trained_norm"]["narrow"]["norm"]


def test_a_missing_intervention_is_refused_before_the_model_loads(tmp_path):
    from emjax.configuration import load_config
    from emjax.metrics.runner import SweepConfigError, sweep
    c = load_config(str(paths.CONFIGS / "sweep_default.py"))
    c.model.source = str(tmp_path / "no-model-here")  # loading it would fail differently
    c.interventions = f"general={tmp_path / 'g.safetensors'}"
    c.output_dir = str(tmp_path / "out")
    with pytest.raises(SweepConfigError, match=r"general=.*g\.safetensors: no such file"):
        sweep(c, ("efficiency",))
