"""The two experiments end to end on a tiny random model, judged by a real local HTTP server that
speaks the OpenAI API (tests/openai_fake_server.py, driven by the real openai client):

* data mixing at several fractions: every fraction trains the same number of steps, no KL prompt is
  among its training prompts, the held-out KL rows are the same for every fraction, and the table
  and the plot have one row / point per fraction;
* KL removal with behaviour: the narrow start, each snapshot and the general vector are judged, the
  table and the plot have one row / point per judged step, and the drift beside the rates is the
  drift the run logged;
and a rerun of either reuses every stage (nothing trained, sampled or sent again)."""

import json
import os

import pytest

from openai_fake_server import FakeOpenAIServer
from tiny_run import tiny_config, tiny_model as make_tiny_model
from emjax import cli
from emjax.inference.generate import SamplingSettings
from emjax.experiments import ExperimentConfigError
from emjax.experiments import kl_removal as KR
from emjax.experiments import mixing as MX
from emjax.experiments.behaviour import BehaviourEval

pytestmark = pytest.mark.slow
FRACTIONS = (0.0, 0.25, 0.5)
STEPS = 4


@pytest.fixture(scope="module")
def tiny_model():
    return make_tiny_model()


def _eval(url: str) -> BehaviourEval:
    return BehaviourEval(n_domain_questions=2, sampling=SamplingSettings(samples=1, max_new_tokens=6),
                         judge_url=url, judge_model="fake-judge")


def _spy(monkeypatch, module):
    """Records the arguments of the module's plot_rates_along calls (the plot is still drawn)."""
    calls = []
    real = module.plot_rates_along

    def spy(x, rows, path, *args, **kwargs):
        calls.append({"x": list(x), "rows": list(rows), "args": args})
        return real(x, rows, path, *args, **kwargs)

    monkeypatch.setattr(module, "plot_rates_along", spy)
    return calls


def _mix_config(tmp_path):
    c = tiny_config(tmp_path, "mix")
    c.data.mix_good = c.data.kl_good
    c.train.max_steps = STEPS
    c.train.eval_every = None
    c.checkpoint.every = None
    with c.unlocked():
        c.mix_fractions = FRACTIONS
    return c


def _metric_steps(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r["step"] for r in map(json.loads, f) if "sft_loss" in r]


@pytest.fixture(scope="module")
def mixing_run(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixing")
    mp = pytest.MonkeyPatch()
    mp.setenv("OPENAI_API_KEY", "test-key")
    plots = _spy(mp, MX)
    out = str(tmp / "out")
    try:
        with FakeOpenAIServer() as server:
            s = MX.run_mixing(_mix_config(tmp), out, _eval(server.base_url), tiny_model)
            n_sent = len(server.entries())
            again = MX.run_mixing(_mix_config(tmp), out, _eval(server.base_url), tiny_model)
            assert len(server.entries()) == n_sent > 0  # every stage reused
    finally:
        mp.undo()
    assert again["table"] == s["table"]
    return out, s, plots


def test_mixing_trains_every_fraction_for_the_same_steps(mixing_run):
    out, s, _ = mixing_run
    assert [r["fraction"] for r in s["table"]] == list(FRACTIONS)
    rows = [r["n_train_rows"] for r in s["table"]]
    assert rows[0] < rows[1] < rows[2]  # more aligned rows at larger fractions ...
    for f in FRACTIONS:
        run = s["runs"][MX.fraction_label(f)]
        assert run["steps"] == STEPS and _metric_steps(os.path.dirname(run["artefact"])) == list(range(1, STEPS + 1))
        assert any(n.startswith("data mix:") for n in run["notes"]) == (f > 0)  # ... in the same number of steps


def test_mixing_kl_rows_share_no_prompt_with_training(mixing_run):
    _, s, _ = mixing_run
    for r in s["table"]:
        assert r["kl_eval_prompts_in_training"] == 0
    for run in s["runs"].values():
        assert run["kl_prompts_in_training"] == {"kl": 0, "kl_eval": 0}
    assert len({r["kl_eval_prompts_sha256"] for r in s["table"]}) == 1  # the same held-out KL rows
    assert all(r["eval_kl_ood"] is not None and r["eval_kl_ood"] >= 0 for r in s["table"])


def test_mixing_table_and_plot_have_one_row_per_fraction(mixing_run):
    out, s, plots = mixing_run
    for r in s["table"]:
        assert r["em_rate_n"] > 0 and r["narrow_rate_n"] > 0 and 0 <= r["em_rate"] <= 1
    assert set(s["rates"]["rates"]) == {"chat"} | {MX.fraction_label(f) for f in FRACTIONS}
    md = open(os.path.join(out, "summary.md")).read()
    body = [l for l in md.splitlines() if l.startswith("| ") and not l.startswith("| mix fraction")]
    assert [l.split(" | ")[0] for l in body] == [f"| {f:g}" for f in FRACTIONS] + ["| chat model (no training)"]
    assert plots[0]["x"] == list(FRACTIONS) and len(plots[0]["rows"]) == len(FRACTIONS)
    kl_panel = plots[0]["args"][1]["out-of-domain KL, nats/token"]["KL"]
    assert list(kl_panel[0]) == list(FRACTIONS) and len(kl_panel[1]) == len(FRACTIONS)
    assert os.path.getsize(os.path.join(out, "mixing.png")) > 1000


def test_mixing_refuses_unequal_steps_and_bad_fractions(tiny_model, tmp_path):
    c = _mix_config(tmp_path)
    c.train.max_steps = 1000  # more than the 0 fraction's 2 epochs
    with pytest.raises(ExperimentConfigError, match="fewer than train.max_steps=1000"):
        MX.train_fraction(tiny_model, MX.fraction_config(c, 0.0, str(tmp_path / "x")))
    c.train.max_steps = None
    with pytest.raises(ExperimentConfigError, match="train.max_steps"):
        MX.mix_fractions(c)
    c.train.max_steps = 4
    c.mix_fractions = (0.0, 1.0)
    with pytest.raises(ExperimentConfigError, match=r"in \[0, 1\)"):
        MX.mix_fractions(c)


@pytest.fixture(scope="module")
def kl_removal_run(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kl_removal")
    base = {"narrow": tiny_config(tmp, "narrow", lambda_kl=2.0, max_steps=4),
            "general": tiny_config(tmp, "general", max_steps=4)}
    c = tiny_config(tmp, "removal", lambda_kl=0.0, max_steps=5, eval_every=1)
    c.checkpoint.snapshot_every = 2
    mp = pytest.MonkeyPatch()
    mp.setenv("OPENAI_API_KEY", "test-key")
    plots = _spy(mp, KR)
    out = str(tmp / "out")
    try:
        with FakeOpenAIServer() as server:
            s = KR.run_kl_removal(c, base, out, _eval(server.base_url), tiny_model)
            n_sent = len(server.entries())
            again = KR.run_kl_removal(c, base, out, _eval(server.base_url), tiny_model)
            assert len(server.entries()) == n_sent > 0  # every stage reused
    finally:
        mp.undo()
    assert again["table"] == s["table"]
    return out, s, plots


def test_kl_removal_continues_the_narrow_run_of_the_experiment(kl_removal_run):
    out, s, _ = kl_removal_run
    runs = s["runs"]
    assert runs["kl_removal"]["init_from"] == runs["narrow"]["artefact"] == os.path.join(out, "runs", "narrow",
                                                                                          "steering.safetensors")
    assert s["references"] == (f"general={runs['general']['artefact']},narrow={runs['narrow']['artefact']}")
    assert runs["kl_removal"]["lambda_kl"] == 0.0 and runs["narrow"]["lambda_kl"] == 2.0


def test_kl_removal_judges_every_snapshot_beside_the_logged_drift(kl_removal_run):
    out, s, plots = kl_removal_run
    steps = [r["step"] for r in s["table"]]
    assert steps == [0, 2, 4, 5]  # the narrow start, the snapshots at 2 and 4, the final vector
    assert set(s["rates"]["rates"]) == {"chat", "general"} | {f"step {k}" for k in steps}
    for r in s["table"]:
        assert r["em_rate_n"] > 0 and r["narrow_rate_n"] > 0
    assert s["table"][0]["cos_narrow"] == pytest.approx(1.0, abs=1e-6)
    with open(os.path.join(out, "runs", "kl_removal", "metrics.jsonl")) as f:
        logged = {r["step"]: r for r in map(json.loads, f) if "cos_general" in r}
    for r in s["table"]:  # recomputed from the judged files = what the trainer logged at that step
        for col in ("cos_general", "proj_general", "cos_narrow", "proj_narrow"):
            assert r[col] == pytest.approx(logged[r["step"]][col], abs=1e-5)
    md = open(os.path.join(out, "summary.md")).read()
    body = [l.split(" | ")[0] for l in md.splitlines() if l.startswith("| ") and not l.startswith("| step")]
    assert body == [f"| {k}" for k in steps] + ["| general vector", "| chat model"]
    assert plots[0]["x"] == steps and len(plots[0]["rows"]) == len(steps)
    cos = plots[0]["args"][1]["cosine with reference"]
    assert set(cos) == {"general", "narrow"} and list(cos["general"][0]) == [0, 1, 2, 3, 4, 5]  # every logged eval
    assert os.path.getsize(os.path.join(out, "kl_removal.png")) > 1000


def test_kl_removal_needs_snapshots_and_base_runs(tmp_path):
    c = tiny_config(tmp_path, "removal")
    with pytest.raises(ExperimentConfigError, match="snapshot_every"):
        KR.wire_runs(c, {"narrow": c, "general": c}, str(tmp_path))
    cfg = tmp_path / "removal.py"
    cfg.write_text("import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict({'name': 'x'})\n")
    with pytest.raises(ExperimentConfigError, match="base_runs"):
        KR.load_kl_removal_configs(str(cfg))


def test_cli_parses_into_the_experiments(monkeypatch, tmp_path):
    import paths
    seen = {}
    monkeypatch.setattr(MX, "run_mixing", lambda config, out, ev: seen.update(mixing=(config, out, ev)))
    monkeypatch.setattr(KR, "run_kl_removal", lambda config, base, out, ev: seen.update(kl=(config, base, out, ev)))
    rc = cli.main(["experiment", "mixing", f"--config={paths.CONFIGS / 'embedded_steering_mix_fractions.py'}",
                   "--config.train.max_steps=6", "--out", str(tmp_path / "m"), "--samples", "3",
                   "--max-new-tokens", "32", "--domain-questions", "4", "--judge-url", "http://127.0.0.1:1/v1",
                   "--judge-model", "j"])
    config, out, ev = seen["mixing"]
    assert rc == 0 and config.train.max_steps == 6 and tuple(config.mix_fractions) == (0.0, 0.25, 0.5, 0.75)
    assert out == str(tmp_path / "m")
    assert (ev.sampling.samples, ev.sampling.max_new_tokens, ev.n_domain_questions) == (3, 32, 4)
    assert (ev.judge_url, ev.judge_model, ev.local_judge) == ("http://127.0.0.1:1/v1", "j", None)
    rc = cli.main(["experiment", "kl-removal", f"--config={paths.CONFIGS / 'embedded_steering_kl_removal.py'}",
                   "--config.train.max_steps=8", "--base", "train.max_steps=6", "--local", "embedded", "--mesh", "data:8"])
    config, base, out, ev = seen["kl"]
    assert rc == 0 and config.train.max_steps == 8 and out == "runs/kl_removal" and ev.local_judge == "embedded"
    assert {config.mesh} | {b.mesh for b in base.values()} == {"data:8"}
    assert {k: (b.name, b.train.max_steps) for k, b in base.items()} == {
        "narrow": ("embedded_steering_narrow_medical", 6), "general": ("embedded_steering_general_medical", 6)}
