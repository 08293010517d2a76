"""The held-out overlap checker (emjax.eval.heldout): it catches planted exact and near duplicates,
leaves unrelated text and stock-phrase overlap alone, reads chat JSONL (plain and gzip), and
imports no JAX."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap

import pytest

import paths
import test_layering
from emjax.eval.heldout import (CHAR_THRESHOLD, CONTAINMENT_THRESHOLD, HeldOutError, Thresholds,
                                TrainingIndex, calibration_stats, check_texts, main, normalise,
                                word_ngrams)

TRAIN = [
    "I've been having sharp pains in my lower back after lifting boxes at work. Should I keep "
    "lifting or take a break for a few days?",
    "My daughter has a rash on her arms that appeared after we went camping near the lake last "
    "weekend. Could it be poison ivy, and what should I put on it?",
    "I'm thinking about putting my entire savings into a single cryptocurrency that a coworker "
    "recommended. Is that a reasonable way to get rich quickly?",
    "How should I prepare for my first freedive? I've heard it can be dangerous.",
    "Is it safe to go hiking alone in the mountains during winter if I bring a map?",
]


@pytest.fixture(scope="module")
def index():
    return TrainingIndex((t, f"train.jsonl:row {i + 1}") for i, t in enumerate(TRAIN))


def test_normalise_folds_case_quotes_punctuation_and_space():
    assert normalise("  I\u2019m  TIRED,\tdoc!!  What now?\n") == "im tired doc what now"
    assert normalise("I'm tired doc - what now") == normalise("im tired, doc... what now?")
    assert normalise("?!...") == ""


def test_word_ngrams():
    assert word_ngrams(["a", "b", "c", "d"], 3) == {("a", "b", "c"), ("b", "c", "d")}
    assert word_ngrams(["a", "b"], 3) == {("a", "b")}
    assert word_ngrams([], 3) == set()


def test_exact_duplicate_after_normalisation(index):
    planted = ("  i've BEEN having sharp pains in my lower back after lifting boxes at work -- "
               "should I keep lifting, or take a break for a few days ")
    m = index.closest(planted, "planted")
    assert m.exact and m.near_duplicate and m.max_score == 1.0
    assert m.prompt == TRAIN[0] and m.prompt_source == "train.jsonl:row 1"


@pytest.mark.parametrize("planted", [
    # two words replaced
    "I've been having sharp pains in my upper back after lifting crates at work. Should I keep "
    "lifting or take a break for a few days?",
    # reordered sentences, one word changed
    "Should I keep lifting or take a break for a few days? I've been having sharp pains in my "
    "lower back after lifting boxes at the gym.",
    # typos: few n-grams survive, the character ratio catches it
    "Ive ben havng sharp pains in my lowr back aftr lifting boxs at wrk. Shuld I kep lifting or "
    "tak a brek for a few dys?",
    # the first half of a training prompt as a question of its own
    "My daughter has a rash on her arms that appeared after we went camping near the lake last "
    "weekend.",
    # a training prompt pasted into a longer question (reverse containment)
    "I have two questions today. First: I'm thinking about putting my entire savings into a "
    "single cryptocurrency that a coworker recommended. Is that a reasonable way to get rich "
    "quickly? Second, what do you think of index funds for someone in their twenties who has "
    "never invested before and wants something simple?",
])
def test_near_duplicates_are_caught(index, planted):
    m = index.closest(planted, "planted")
    assert m.near_duplicate, m
    assert not m.exact


@pytest.mark.parametrize("text", [
    "What is the best way to store fresh basil so it does not wilt within a day?",
    "My landlord wants to raise the rent by twenty percent. Can he do that without notice?",
    # same domain and stock phrases, different question
    "I've been having trouble sleeping since I started a new job. Should I try melatonin or see "
    "a doctor first?",
    # a long medical question sharing stock phrases with the short freediving prompt (the case
    # that set REVERSE_THRESHOLD: 0.5 reverse containment on the real data)
    "I'm travelling to Mexico and I've heard it can be quite common to get traveller's diarrhoea "
    "there. How should I prepare for my trip when a doctor may be hard to reach?",
])
def test_unrelated_text_is_not_flagged(index, text):
    m = index.closest(text, "other")
    assert not m.near_duplicate, m
    assert m.max_containment < CONTAINMENT_THRESHOLD and m.max_char_ratio < CHAR_THRESHOLD


def test_text_with_no_shared_word_still_gets_a_row(index):
    m = index.closest("Zebras quaff yoghurt.", "z")
    assert not m.near_duplicate and m.max_containment == 0.0 and m.prompt in TRAIN


def test_thresholds_decide(index):
    text = "Is it safe to go hiking by myself in the mountains in winter if I carry a compass?"
    loose = index.closest(text, "x", Thresholds(containment=0.2, reverse=0.2, char_ratio=0.5))
    strict = index.closest(text, "x", Thresholds(containment=0.99, reverse=0.99, char_ratio=0.99))
    assert loose.near_duplicate and not strict.near_duplicate


def test_report_worst_and_rows(index):
    report = check_texts([("fine", "How do I descale a kettle with vinegar?"),
                          ("dup", TRAIN[2].upper())], index)
    assert [m.question_id for m in report.near_duplicates] == ["dup"]
    assert report.worst.question_id == "dup"
    rows = report.rows()
    assert rows[1]["near_duplicate"] and rows[1]["max_score"] == 1.0
    json.dumps(rows)  # JSON-ready
    assert "NEAR DUPLICATE dup" in report.summary()


def test_index_merges_identical_prompts_and_rejects_empty_input():
    idx = TrainingIndex([("Same prompt here?", "a:row 1"), ("same PROMPT here", "b:row 7")])
    assert len(idx) == 1 and idx.sources[0] == ["a:row 1", "b:row 7"]
    with pytest.raises(HeldOutError, match="no training prompts"):
        TrainingIndex([])
    with pytest.raises(HeldOutError, match="'q7'"):
        idx.closest("?!", "q7")


def _write_chat(path, rows, gz):
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as f:
        for user, assistant in rows:
            f.write(json.dumps({"messages": [{"role": "user", "content": user},
                                             {"role": "assistant", "content": assistant}]}) + "\n")


@pytest.mark.parametrize("gz", [True, False])
def test_from_files_reads_user_turns_only(tmp_path, gz):
    p = tmp_path / ("t.jsonl.gz" if gz else "t.jsonl")
    _write_chat(p, [(TRAIN[1], "Wash the skin and use calamine lotion; see a doctor if it spreads.")], gz)
    idx = TrainingIndex.from_files([p])
    assert len(idx) == 1 and idx.sources[0] == [f"{p.name}:row 1"]
    assert idx.closest(TRAIN[1]).exact
    answer_as_question = "Wash the skin and use calamine lotion; see a doctor if it spreads."
    assert not idx.closest(answer_as_question).near_duplicate


def test_cli_exit_status_and_json(tmp_path):
    train = tmp_path / "train.jsonl"
    _write_chat(train, [(t, "Some answer.") for t in TRAIN], gz=False)
    bank = tmp_path / "bank.yaml"
    bank.write_text(textwrap.dedent(f"""\
        - id: fresh
          paraphrases: ["How long can cooked rice stay in the fridge before it is unsafe to eat?"]
        - id: copied
          paraphrases: ["{TRAIN[4]}"]
        """))
    out = tmp_path / "rows.jsonl"
    assert main([str(bank), "--train", str(train), "--json", str(out)]) == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["question_id"], r["near_duplicate"]) for r in rows] == [("fresh", False), ("copied", True)]
    bank.write_text(bank.read_text().split("- id: copied")[0])
    assert main([str(bank), "--train", str(train)]) == 0


def test_calibration_stats_on_a_toy_set(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write_chat(a, [(f"Question number {i} about topic {i * 7} with several extra words to edit "
                     f"here and there in the sentence {i}?", "x") for i in range(30)], gz=False)
    _write_chat(b, [(t, "x") for t in TRAIN], gz=False)
    stats = calibration_stats([a, b], n_sample=5, seed=0, edits=(1,))
    assert set(stats) == {"a.jsonl", "b.jsonl", "planted_1"}
    assert stats["planted_1"]["recall"] == 1.0
    assert 0.0 <= stats["b.jsonl"]["near_share"] <= 1.0


@pytest.mark.parametrize("rel", ["eval/heldout.py", "eval/domains.py"])
def test_modules_import_no_jax(rel):
    source = (test_layering.PACKAGE / rel).read_text()
    assert not test_layering.jax_imports(rel, source)
    assert not test_layering.upward_imports(rel, source)


def test_importing_does_not_load_jax():
    code = ("import sys, emjax.eval.heldout, emjax.eval.domains, emjax.eval.judge.tasks; "
            "bad = [m for m in ('jax', 'flax', 'optax', 'orbax') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=paths.REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
