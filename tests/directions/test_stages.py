"""The `emjax directions` stages end to end on the tiny model: answers selected by real judge
scores (the real `openai` client against the local fake server), a mean-diff file that compare
and ablation read back, the gradient stage, and the CLI's errors."""

import json

import numpy as np
import pytest

from openai_fake_server import FakeOpenAIServer
from tiny_run import tiny_model
from emjax.cli import main as cli_main
from emjax.directions import run as R
from emjax.directions.sources import DirectionError, ablation_from_spec, load_directions
from emjax.eval.judge.request import RequestConfig
from emjax.eval.judge.stage import judge
from emjax.eval.selection import AnswerSelection
from emjax.eval.records import AnswerRecord, append_answers

TEMPLATES = {"aligned": "METRIC=aligned\nQ: {question}\nA: {answer}",
             "coherent": "METRIC=coherent\nQ: {question}\nA: {answer}"}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture
def judged(tmp_path, monkeypatch):
    """Answers with forced judge scores: even samples misaligned (aligned 10), odd aligned (90);
    sample 5 incoherent. Judged through the fake server."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-directions")
    q = tmp_path / "questions.jsonl"
    q.write_text(json.dumps({"id": "q1", "question": "What would you do?", "judge_prompts": TEMPLATES}) + "\n")
    answers = tmp_path / "answers.jsonl"
    recs = []
    for i in range(8):
        aligned = 10 if i % 2 == 0 else 90
        coherent = 20 if i == 5 else 80
        recs.append(AnswerRecord(question_id="q1", paraphrase_index=0, sample_index=i, question="What would you do?",
                                 answer=f"Reply {i} [[aligned={aligned}]] [[coherent={coherent}]]", model="tiny",
                                 meta={"label": "steered" if i < 6 else "base"}))
    append_answers(answers, recs)
    out = tmp_path / "judged.jsonl"
    with FakeOpenAIServer() as server:
        judge(AnswerSelection(answers=[str(answers)], questions=[str(q)]), str(out),
              request=RequestConfig(model="fake", base_url=server.base_url, timeout=5, max_retries=0),
              judge_model="fake")
    return {"answers": str(answers), "questions": str(q), "judgements": str(out)}


def _set(j, where=None, label=None):
    return R.AnswerSet(answers=[j["answers"]], where=where, label=label, judgements=[j["judgements"]],
                       questions=[j["questions"]], judge_model="fake")


def test_selection_by_judge_scores_and_label(judged):
    mis = R.select_answers(_set(judged, "aligned<30,coherent>50"))
    ali = R.select_answers(_set(judged, "aligned>70,coherent>50"))
    assert [r.sample_index for r in mis] == [0, 2, 4, 6]
    assert [r.sample_index for r in ali] == [1, 3, 7]  # 5 is incoherent
    assert [r.sample_index for r in R.select_answers(_set(judged, label="base"))] == [6, 7]
    with pytest.raises(DirectionError, match="METRIC<VALUE"):
        R.select_answers(_set(judged, "aligned=<30"))
    with pytest.raises(DirectionError, match="needs the judge results"):
        R.select_answers(R.AnswerSet(answers=[judged["answers"]], where="aligned<30"))


def test_mean_diff_compare_and_ablation_round_trip(model, judged, tmp_path):
    out = tmp_path / "md"
    s = R.mean_diff_stage(model, _set(judged, "aligned<30,coherent>50"), _set(judged, "aligned>70,coherent>50"),
                          str(out), batch_size=2, balance_seed=0)
    assert s["rows_a"] == s["rows_b"] == 3  # balanced to the aligned count
    arrays, meta = load_directions(s["file"])
    d = arrays["mean_diff"]
    assert d.shape == (model.cfg.n_layers, model.cfg.d_model) and np.all(np.linalg.norm(d, axis=-1) > 0)
    assert meta["set_a"]["where"] == "aligned<30,coherent>50" and (out / "mean_diff_norms.png").exists()
    cmp = R.compare_stage(model, f"md={s['file']}:mean_diff,neg={s['file']}:mean_diff,rand=random:1",
                          str(tmp_path / "cos"), layer=1)
    assert cmp["cosines_at_layer"]["md/neg"] == pytest.approx(1.0, abs=1e-6)
    assert (tmp_path / "cos" / "cosines.png").exists() and (tmp_path / "cos" / "cosines.md").read_text().startswith("| layer 1")
    abl = ablation_from_spec(f"{s['file']}:mean_diff@2", model.cfg)
    np.testing.assert_allclose(np.asarray(abl.units[0]), d[2] / np.linalg.norm(d[2]), rtol=1e-5)


def test_gradient_stage_and_cli_errors(model, tmp_path, capsys):
    from emjax.interventions.files import save_steering
    from emjax.interventions.steering import SteeringVectors
    import jax.numpy as jnp
    rng = np.random.default_rng(0)
    paths = {}
    for label in ("general", "narrow"):
        paths[label] = str(tmp_path / f"{label}.safetensors")
        save_steering(SteeringVectors(vectors=jnp.asarray(rng.standard_normal((1, model.cfg.d_model)), jnp.float32),
                                      layers=(2,), alpha=2.0), paths[label], model_name="tiny")
    spec = ",".join(f"{k}={v}" for k, v in paths.items())
    s = R.gradient_stage(model, spec, str(tmp_path / "grad"), data="sample:bad_medical", n_rows=6, max_len=48,
                         batch_size=3, norms="1x,2")
    rows = s["rows"]
    assert [r["along"] for r in rows] == ["base", "general", "general", "narrow", "narrow"]
    assert rows[2]["norm"] == 2.0 and rows[1]["norm"] == pytest.approx(s["reference_norm"])
    assert (tmp_path / "grad" / "gradient.md").exists()
    with pytest.raises(DirectionError, match="multiple like 2x"):
        R.gradient_stage(model, spec, str(tmp_path / "g2"), n_rows=2, norms="twice")
    assert cli_main(["directions", "drift", str(tmp_path / "no-run")]) == 2
    assert "no-run: no such run folder" in capsys.readouterr().err


def test_mean_diff_of_chat_files(model, tmp_path, capsys):
    """Sets from chat JSONL (the shipped bad / good medical samples): the stage averages exactly the
    rows given, and the CLI refuses an empty set by name."""
    s = R.mean_diff_stage(model, R.AnswerSet(chats=["sample:bad_medical"]), R.AnswerSet(chats=["sample:good_medical"]),
                          str(tmp_path / "md"), max_len=256, batch_size=8, balance_seed=None)
    from emjax.data.conversations import read_chat_jsonl
    from emjax.data.mixtures import resolve_data_spec
    n_bad = len(read_chat_jsonl(resolve_data_spec("sample:bad_medical", "")))
    assert s["rows_a"] == s["given_a"] == n_bad and s["set_a"]["chats"] == ["sample:bad_medical"]
    assert cli_main(["directions", "mean-diff", "--b-chats", "sample:good_medical", "--out", str(tmp_path / "x")]) == 2
    assert "set a is empty" in capsys.readouterr().err
