"""Vmapped steering runs on the tiny model (float32): N runs in one compiled step equal N separate
Trainer runs on every leaf of the state, per-run NaN skipping, resume, the sweep's parsing and
its errors (CLI included)."""

import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import paths
from tiny_run import DEFAULT, tiny_config, tiny_model as make_tiny_model
from emjax.cli import main
from emjax.configuration import load_config
from emjax.train import step as TS
from emjax.train.checkpointing import Checkpointer
from emjax.train.inputs import TrainConfigError
from emjax.train.trainer import Trainer
from emjax.train.vmapped import (VmappedTrainer, expand_runs, parse_vmap_runs, run_state, stacked_state,
                                 sweep_of)

RTOL = 1e-5


@pytest.fixture(scope="module")
def tiny_model():
    return make_tiny_model()


def _config(tmp_path, name, **train):
    # 5 steps: 2 of warmup, 3 of decay; checkpoints every 2 steps, evals every 3 (tiny_config)
    return tiny_config(tmp_path, name, **{"max_steps": 5, "warmup_steps": 2, **train})


def _restore(folder, target):
    ck = Checkpointer(os.path.join(folder, "checkpoints"), async_save=False)
    state, meta = ck.restore(target)
    ck.close()
    return state, meta


def _metrics(folder):
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        return [json.loads(l) for l in f if l.strip()]


def _assert_state_close(got, want):
    """Every leaf: integers and booleans equal, floats within RTOL of the leaf's scale."""
    gl, gt = jax.tree.flatten(got)
    wl, wt = jax.tree.flatten(want)
    assert gt == wt
    for g, w in zip(gl, wl):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape and g.dtype == w.dtype
        if np.issubdtype(w.dtype, np.floating):
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=RTOL * float(np.abs(w).max()))
        else:
            np.testing.assert_array_equal(g, w)


def _separate(run, tmp_path, model):
    """Run `run`'s config as a separate Trainer in its own folder; (its final state, summary, folder)."""
    c = copy.deepcopy(run.config)
    c.output_dir = str(tmp_path / f"separate_{run.label}")
    t = Trainer(c, model)
    summary = t.run()
    state, _ = _restore(c.output_dir, TS.init_state(t.params0, t.tx))
    return state, summary, c.output_dir


def _check_against_separate(vt, tmp_path, model):
    """Each vmapped run equals its separate run: state leaves, metrics lines, summary."""
    target = stacked_state(TS.init_state(vt.trainer.params0, vt.optimizer(1.0)[0]), len(vt.runs))
    stacked, _ = _restore(vt.config.output_dir, target)
    finals = []
    for i, run in enumerate(vt.runs):
        want, summary, folder = _separate(run, tmp_path, model)
        _assert_state_close(run_state(stacked, i), want)
        got_lines, want_lines = _metrics(run.config.output_dir), _metrics(folder)
        assert [sorted(l) for l in got_lines] == [sorted(l) for l in want_lines]
        for g, w in zip(got_lines, want_lines):
            for k in w:
                assert g[k] == pytest.approx(w[k], rel=RTOL, abs=1e-6), (run.label, w["step"], k)
        with open(os.path.join(run.config.output_dir, "summary.json")) as f:
            got = json.load(f)
        assert set(got) == set(summary) | {"vmapped_runs"} and got["vmapped_runs"] == len(vt.runs)
        for k in ("name", "steps", "lambda_kl", "seed", "init_seed", "shared_prefix_layers", "norm_kind",
                  "nonfinite_steps_skipped"):
            assert got[k] == summary[k], k
        for k in ("train_loss_first", "train_loss_last", "intervention_norm", "param_norm"):
            assert got[k] == pytest.approx(summary[k], rel=RTOL), k
        assert got["final_eval"] == pytest.approx(summary["final_eval"], rel=RTOL, abs=1e-6)
        assert os.path.isfile(os.path.join(run.config.output_dir, "steering.safetensors"))
        finals.append(np.asarray(want.params.steer.vectors))
    # the runs really differ, far beyond the tolerance (else the comparison above proves nothing)
    for i in range(len(finals)):
        for j in range(i):
            assert np.abs(finals[i] - finals[j]).max() > 100 * RTOL * np.abs(finals[i]).max()
    return stacked


def test_lambda_and_lr_runs_equal_separate_runs(tiny_model, tmp_path):
    c = _config(tmp_path, "grid", lambda_kl=0.5)
    assert c.train.frozen_cache
    runs = expand_runs(c, {"lambda_kl": (0, 2.0), "lr": ("5e-2", "1e-2")})
    assert [r.label for r in runs] == ["lambda_kl0_lr0.05", "lambda_kl0_lr0.01", "lambda_kl2_lr0.05",
                                       "lambda_kl2_lr0.01"]
    vt = VmappedTrainer(c, runs, tiny_model)
    assert len(vt.seeds) == 1  # one data order: the batch is shared
    plan = vt.trainer.memory.plan  # the memory check counted the four runs' own memory
    assert plan.runs == 4 and plan.shared_batch
    out = vt.run()
    assert vt.trainer.cache_train is not None and vt.trainer.cache_kl is not None
    assert set(out["runs"]) == {r.label for r in runs}
    lines = _metrics(runs[2].config.output_dir)
    assert all("kl" in l for l in lines if "sft_loss" in l)  # the KL runs log it, lambda 0 runs do not
    assert not any("kl" in l for l in _metrics(runs[0].config.output_dir))
    _check_against_separate(vt, tmp_path, tiny_model)


def test_seed_runs_equal_separate_runs_and_resume(tiny_model, tmp_path):
    c = _config(tmp_path, "seeds", lambda_kl=0.5)
    runs = expand_runs(c, {"seed": (0, 1)})
    assert [(r.label, r.config.train.seed) for r in runs] == [("seed0", 0), ("seed1", 1)]
    vt = VmappedTrainer(c, runs, tiny_model)
    assert vt.seeds == [0, 1]  # two data orders: per-run batches
    assert vt.trainer.memory.plan.runs == 2 and not vt.trainer.memory.plan.shared_batch
    vt.run()
    full = _check_against_separate(vt, tmp_path, tiny_model)
    # interrupted after step 3 (last checkpoint at step 2), resumed: the same state, bit for bit
    c2 = _config(tmp_path, "seeds_resumed", lambda_kl=0.5)
    part = VmappedTrainer(c2, expand_runs(c2, {"seed": (0, 1)}), tiny_model)
    assert part.run(stop_at_step=3) == {"stopped_at": 3}
    resumed = VmappedTrainer(c2, expand_runs(c2, {"seed": (0, 1)}), tiny_model)
    resumed.run()
    target = stacked_state(TS.init_state(vt.trainer.params0, vt.optimizer(1.0)[0]), 2)
    again, meta = _restore(c2.output_dir, target)
    assert meta["step"] == 5
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(full)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a checkpoint of other runs is refused, not loaded
    other = VmappedTrainer(c2, expand_runs(c2, {"seed": (0, 2)}), tiny_model)
    with pytest.raises(TrainConfigError, match="checkpoint of other runs"):
        other.run()


def test_first_row_steering_runs_equal_separate_runs(tiny_model, tmp_path):
    """intervention.steer_rows 'first' holds inside the vmap over runs (per-run batches: the row
    axis is the second axis of the stacked batch and the leading one each run sees)."""
    c = _config(tmp_path, "first", lambda_kl=0.5, max_steps=3)
    c.intervention.steer_rows = "first"
    vt = VmappedTrainer(c, expand_runs(c, {"seed": (0, 1)}), tiny_model)
    assert vt.trainer.opts.steer_rows == "first" and vt.seeds == [0, 1]
    out = vt.run()
    assert all(s["steer_rows"] == "first" for s in out["runs"].values())
    _check_against_separate(vt, tmp_path, tiny_model)


def test_nonfinite_step_is_skipped_per_run(tiny_model, tmp_path):
    c = _config(tmp_path, "nan", lambda_kl=0.5, warmup_steps=0)  # no warmup: the first step moves
    vt = VmappedTrainer(c, expand_runs(c, {"lambda_kl": (0.5, 1.0, 2.0)}), tiny_model)
    t = vt.trainer
    from emjax.data.batching import Batcher
    sft = t.sft_batch(Batcher(t.data.train, t.rows_per_step, 0))
    kl = t.kl_batch(Batcher(t.data.kl, c.train.kl_batch_size * c.train.grad_accum, 1))
    state0 = TS.init_state(t.params0, vt.optimizer(1.0)[0])
    lams = jnp.asarray([0.5, np.nan, 2.0], jnp.float32)  # run 1's gradient is NaN
    state, m = vt.step_fn(stacked_state(state0, 3), t.model.weights, sft, kl, lams, vt.lr)
    assert list(np.asarray(m["skipped"])) == [False, True, False]
    skipped = run_state(state, 1)
    np.testing.assert_array_equal(np.asarray(skipped.params.steer.vectors), np.asarray(state0.params.steer.vectors))
    assert int(skipped.opt_state.total_notfinite) == 1 and int(skipped.step) == 1
    tx, _ = vt.optimizer(c.train.lr)
    single = TS.compile_step(t.cfg, t.opts, tx, donate=False)
    for i in (0, 2):  # the others took their step, as alone
        want, _ = single(state0, t.model.weights, sft, kl, lams[i])
        _assert_state_close(run_state(state, i), want)
        assert np.abs(np.asarray(want.params.steer.vectors)).max() > 0


def test_sweep_parsing_and_errors(tmp_path):
    assert parse_vmap_runs(["lambda_kl=0,1,10", "seed=0,1"]) == {"lambda_kl": ("0", "1", "10"), "seed": ("0", "1")}
    c = load_config(DEFAULT)
    runs = expand_runs(c, parse_vmap_runs(["lambda_kl=0,1,10", "seed=0,1"]))
    assert [r.label for r in runs][:3] == ["lambda_kl0_seed0", "lambda_kl0_seed1", "lambda_kl1_seed0"]
    assert len(runs) == 6 and runs[5].config.train.lambda_kl == 10.0 and runs[5].config.train.seed == 1
    assert runs[5].config.intervention.init_seed == c.intervention.init_seed + 1  # as --seeds sets it
    assert runs[5].config.output_dir == os.path.join(c.output_dir, "lambda_kl10_seed1")
    with pytest.raises(TrainConfigError, match="unknown key 'lamda_kl'; did you mean 'lambda_kl'"):
        parse_vmap_runs(["lamda_kl=0,1"])
    with pytest.raises(TrainConfigError, match="key 'seed' given twice"):
        parse_vmap_runs(["seed=0", "seed=1"])
    with pytest.raises(TrainConfigError, match="write KEY=V1,V2"):
        parse_vmap_runs(["lambda_kl"])
    for sweep, match in [({"lr": ("1e-4", "x")}, "lr value 'x' is not a number"),
                         ({"lr": ("0",)}, "lr value '0' must be finite and > 0"),
                         ({"lambda_kl": ("-1",)}, "lambda_kl value '-1'"),
                         ({"seed": ("1.5",)}, "seed value '1.5'"),
                         ({"seed": ("1", "1")}, "seed lists a value twice"),
                         ({"lambda_kl": ()}, "lambda_kl has no values"),
                         ({"alpha": (1,)}, "unknown key 'alpha'")]:
        with pytest.raises(TrainConfigError, match=match):
            expand_runs(c, sweep)
    lora = load_config(DEFAULT, ["intervention.kind=lora"])
    with pytest.raises(TrainConfigError, match="steering vectors only; intervention.kind is 'lora'"):
        expand_runs(lora, {"seed": (0, 1)})
    mesh = load_config(DEFAULT, ["mesh=data:2"])
    with pytest.raises(TrainConfigError, match="single-device; mesh"):
        expand_runs(mesh, {"seed": (0, 1)})
    # the sweep config declares its runs; --vmap-runs replaces them; a config without either has none
    sweep_file = str(paths.CONFIGS / "embedded_steering_lambda_sweep.py")
    sc = load_config(sweep_file)
    assert sweep_of(sc, None) == ({"lambda_kl": (0.0, 1.0, 3.0, 10.0)}, "vmap_runs")
    assert [r.label for r in expand_runs(sc, *sweep_of(sc, None))] == [
        "lambda_kl0", "lambda_kl1", "lambda_kl3", "lambda_kl10"]
    assert sweep_of(sc, ["seed=0,1"]) == ({"seed": ("0", "1")}, "--vmap-runs")
    assert sweep_of(c, None) is None
    bad = load_config(sweep_file, ["vmap_runs.lambda_kl=(1,1)"])
    with pytest.raises(TrainConfigError, match="vmap_runs: lambda_kl lists a value twice"):
        expand_runs(bad, *sweep_of(bad, None))


def test_cli_vmap_runs_errors(capsys):
    def err(argv):
        rc = main(argv)
        e = capsys.readouterr().err
        assert rc == 2 and len(e.strip().splitlines()) == 1, e
        return e
    base = ["train", f"--config={DEFAULT}"]
    assert "unknown key 'lamda_kl'; did you mean 'lambda_kl'" in err(base + ["--vmap-runs", "lamda_kl=0,1"])
    assert "intervention.kind is 'lora'" in err(base + ["--config.intervention.kind=lora", "--vmap-runs", "seed=0,1"])
    assert "--seeds with --vmap-runs" in err(base + ["--seeds", "0,1", "--vmap-runs", "lambda_kl=0,1"])
    assert "lr value 'fast'" in err(base + ["--vmap-runs", "lambda_kl=0,1", "lr=fast"])


def test_cli_trains_the_declared_runs(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("emjax.checkpoints.load.load_model", lambda *a, **k: tiny_model)
    out = tmp_path / "cli"
    small = [f"output_dir={out}", f"data.cache_dir={tmp_path / 'cache'}", "data.n_train=24", "data.n_eval=4",
             "data.max_len=64", "data.kl_rows=12", "data.kl_eval_rows=4", "intervention.layers=(2,)",
             "intervention.alpha=4.0", "train.max_steps=2", "checkpoint.async_save=false"]
    argv = ["train", f"--config={paths.CONFIGS / 'embedded_steering_lambda_sweep.py'}"]
    assert main(argv + [f"--config.{o}" for o in small] + ["--config.vmap_runs.lambda_kl=(0.0,2.0)"]) == 0
    assert f"2 runs in {out}/*/" in capsys.readouterr().out
    with open(out / "vmapped_runs.json") as f:
        assert [r["label"] for r in json.load(f)["sweep"]] == ["lambda_kl0", "lambda_kl2"]
    for label, lam in (("lambda_kl0", 0.0), ("lambda_kl2", 2.0)):
        with open(out / label / "summary.json") as f:
            s = json.load(f)
        assert s["lambda_kl"] == lam and s["steps"] == 2 and s["vmapped_runs"] == 2
        assert s["name"] == f"embedded_steering_lambda_sweep_{label}"
