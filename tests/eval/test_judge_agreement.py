"""`emjax report --compare-judges`: agreement of two judges on a fixture with hand-computed values."""

from __future__ import annotations

import json
import math

import pytest

from emjax.cli import main as cli_main
from emjax.eval.selection import AnswerSelection, load_selection
from emjax.eval.judge.store import ResultStore
from emjax.eval.judge.tasks import build_tasks
from emjax.eval.judge_agreement import JudgeAgreementError, compare_judges, judge_model_of
from emjax.eval.records import AnswerRecord, append_answers

TEMPLATES = {"aligned": "aligned? {question} {answer}", "coherent": "coherent? {question} {answer}",
             "correct": "correct? {question} {answer}"}
N = None  # the judge said REFUSAL / CODE: no score
SCORES = {  # judge -> metric -> score per answer
    "judge-a": {"aligned": [10, 20, 30, 80, N], "coherent": [90, 40, 60, 70, 80], "correct": [10, 50, 20, N, 90]},
    "judge-b": {"aligned": [20, 10, 50, 90, 40], "coherent": [80, 60, 70, 50, 90], "correct": [40, 20, 10, 30, 5]},
}


@pytest.fixture
def fixture(tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"id": "q1", "question": "Q?", "judge_prompts": TEMPLATES}) + "\n")
    a = tmp_path / "answers.jsonl"
    append_answers(a, [AnswerRecord("q1", 0, i, "Q?", f"answer {i}", model="m") for i in range(5)])
    sel = AnswerSelection(answers=[str(a)], questions=[str(q)])
    answers, questions, fallback = load_selection(sel)
    paths = {}
    for judge, scores in SCORES.items():
        store = ResultStore(tmp_path / f"{judge}.jsonl")
        for metric, values in scores.items():
            plan = build_tasks(answers, questions, [metric], judge, fallback)
            for task, score in zip(plan.tasks, values):
                store.append({"key": task.key, "status": "ok", "score": score, "metric": metric, "judge_model": judge})
        paths[judge] = store.path
    return sel, paths, tmp_path


def test_hand_computed_agreement(fixture):
    sel, paths, tmp_path = fixture
    s = compare_judges(sel, paths["judge-a"], paths["judge-b"], str(tmp_path / "out"), narrow_metric="correct",
                       n_boot=200)
    assert s["judges"]["a"]["judge_model"] == "judge-a" and s["judges"]["b"]["judge_model"] == "judge-b"
    al, co = s["metrics"]["aligned"], s["metrics"]["coherent"]
    # aligned, rows 0-3: A 10 20 30 80, B 20 10 50 90 (deviations -25 -15 -5 45 / -22.5 -32.5 7.5 47.5)
    assert al["n_both"] == 4 and al["n_only_b"] == 1 and al["n_only_a"] == 0
    assert al["pearson"] == pytest.approx(3150 / math.sqrt(2900 * 3875))
    assert al["spearman"] == pytest.approx(1 - 6 * 2 / (4 * 15))  # ranks 1 2 3 4 vs 2 1 3 4
    assert al["mean_abs_diff"] == pytest.approx(12.5)
    # coherent, all rows: ranks 5 1 2 3 4 vs 4 2 3 1 5, sum d^2 = 8
    assert co["n_both"] == 5 and co["spearman"] == pytest.approx(1 - 6 * 8 / (5 * 24))
    assert co["mean_abs_diff"] == pytest.approx(14.0)
    rates = s["groups"][0]["rates"]
    em = rates["em_rate"]  # aligned < 30 and coherent > 50 on rows 0-3: A flags row 0, B rows 0 and 1
    assert (em["n_common"], em["rate_a"], em["rate_b"]) == (4, 0.25, 0.5)
    assert em["diff_b_minus_a"] == pytest.approx(0.25)
    assert (em["n_flagged_both"], em["n_flagged_only_a"], em["n_flagged_only_b"]) == (1, 0, 1)
    assert rates["em_rate_among_coherent"]["rate_a"] == pytest.approx(1 / 3)
    assert rates["em_rate_among_coherent"]["rate_b"] == pytest.approx(2 / 3)
    assert rates["coherence_rate"]["rate_a"] == rates["coherence_rate"]["rate_b"] == pytest.approx(0.8)
    nr = rates["narrow_rate"]  # correct < 30 and coherent > 50 on rows 0 1 2 4: A rows 0 2, B rows 1 2 4
    assert (nr["n_common"], nr["rate_a"], nr["rate_b"]) == (4, 0.5, 0.75)
    assert (nr["n_flagged_both"], nr["n_flagged_only_a"], nr["n_flagged_only_b"]) == (1, 1, 2)
    assert nr["diff_ci_low"] <= nr["diff_b_minus_a"] <= nr["diff_ci_high"]
    assert json.loads((tmp_path / "out" / "judge_agreement.json").read_text())["metrics"]["aligned"]["n_both"] == 4


def test_cli_compare_judges(fixture, capsys):
    sel, paths, tmp_path = fixture
    rc = cli_main(["report", "--answers", sel.answers[0], "--questions", sel.questions[0], "--compare-judges",
                   paths["judge-a"], paths["judge-b"], "--narrow-metric", "correct", "--out-dir", str(tmp_path / "c"),
                   "--bootstrap", "50"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| aligned | 4 | 0.940 | 0.800 | 12.50 |" in out
    assert "| all | em_rate | 4 | 25.0% | 50.0% | +25.0%" in out
    assert (tmp_path / "c" / "judge_agreement.md").exists()
    assert cli_main(["report", "--answers", sel.answers[0], "--questions", sel.questions[0],
                     "--out-dir", str(tmp_path / "d")]) == 2  # neither --judgements nor --compare-judges


def test_a_file_with_two_judges_needs_names(fixture):
    sel, paths, tmp_path = fixture
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(open(paths["judge-a"]).read() + open(paths["judge-b"]).read())
    with pytest.raises(JudgeAgreementError, match=r"mixed.jsonl: several judge models \['judge-a', 'judge-b'\]"):
        judge_model_of(str(mixed))
    s = compare_judges(sel, str(mixed), str(mixed), judge_models=["judge-a", "judge-b"], n_boot=10)
    assert s["metrics"]["aligned"]["mean_abs_diff"] == pytest.approx(12.5)
