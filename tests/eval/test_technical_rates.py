"""The technical-style rate in and out of the training domain on known scores: the threshold
(> 50, so exactly 50 is not technical), the coherence filter, answers without a score leaving the
denominator, and the per-domain split; upstream's {id, question} files load as questions."""

import math

import numpy as np
import pandas as pd
import pytest

import paths
from emjax.eval.technical import StyleThresholds, judge_notes, style_masks, style_rates

DOMAINS = {"v1": "vehicles", "v2": "vehicles", "f1": "food", "s1": "space"}


def _frame():
    rows = [  # (intervention, question, technical, coherent)
        ("general", "v1", 90, 80), ("general", "v1", 50, 90), ("general", "v2", 70, 30),
        ("general", "v2", 60, 70), ("general", "f1", 80, 60), ("general", "s1", 20, 90),
        ("general", "s1", math.nan, 80), ("general", "f1", 99, math.nan),
        ("narrow", "v1", 95, 90), ("narrow", "v2", 85, 75), ("narrow", "f1", 10, 90), ("narrow", "s1", 51, 51),
    ]
    return pd.DataFrame(rows, columns=["intervention", "question_id", "technical", "coherent"])


def test_rates_in_and_out_of_the_domain_on_known_scores():
    groups = {g["group"]: g for g in style_rates(_frame(), DOMAINS, n_boot=200)}
    g, n = groups["general"], groups["narrow"]
    # general, vehicles: 90/80 yes; 50/90 no (not > 50); 70/30 incoherent; 60/70 yes -> 2 of 4
    assert (g["in_domain"]["technical_rate"]["numerator"], g["in_domain"]["technical_rate"]["denominator"]) == (2, 4)
    assert g["in_domain"]["technical_rate_raw"]["rate"] == pytest.approx(3 / 4)  # 90, 70, 60 > 50
    assert g["in_domain"]["technical_rate_among_coherent"]["denominator"] == 3
    # general, other domains: 80/60 yes, 20/90 no; the unscored ones leave the denominator -> 1 of 2
    o = g["out_of_domain"]
    assert (o["technical_rate"]["numerator"], o["technical_rate"]["denominator"]) == (1, 2)
    assert o["technical_rate_raw"]["denominator"] == 3 and o["technical_rate_raw"]["numerator"] == 2
    assert o["mean_technical"] == pytest.approx((80 + 20 + 99) / 3)
    assert o["n_answers"] == 4 and g["n_answers"] == 8
    assert g["per_domain"]["food"]["technical_rate"]["rate"] == 1.0
    assert g["per_domain"]["space"]["technical_rate"]["rate"] == 0.0
    # narrow: technical inside (2 of 2), little outside (51/51 counts, 10/90 does not)
    assert n["in_domain"]["technical_rate"]["rate"] == 1.0
    assert n["out_of_domain"]["technical_rate"]["rate"] == 0.5
    lo, hi = n["out_of_domain"]["technical_rate"]["ci_low"], n["out_of_domain"]["technical_rate"]["ci_high"]
    assert 0.0 <= lo <= 0.5 <= hi <= 1.0


def test_threshold_and_operator():
    df = _frame()
    num, den = style_masks(df, StyleThresholds(technical=50, technical_op=">="))["technical_rate"]
    num_strict, _ = style_masks(df)["technical_rate"]
    assert num.sum() == num_strict.sum() + 1  # the 50/90 answer counts only with >=
    num90, _ = style_masks(df, StyleThresholds(technical=90))["technical_rate_raw"]
    assert num90.sum() == 2  # 95 and 99 (strictly above 90)
    with pytest.raises(ValueError):
        StyleThresholds(technical_op="<")


def test_unknown_question_ids_fail():
    with pytest.raises(Exception, match="in no technical question file"):
        style_rates(_frame(), {"v1": "vehicles"})


def test_a_small_judge_is_flagged_as_a_plumbing_check():
    recs = [{"judge_model": "local:tiny", "judge_params": 494_000_000}, {"judge_model": "gpt", "score": 3}]
    (note,) = judge_notes(recs, "local:tiny")
    assert "NOT a valid judge" in note and "plumbing" in note and "0.49B" in note
    assert judge_notes(recs, "gpt") == []
    assert judge_notes([{"judge_model": "local:big", "judge_params": 14e9}], "local:big") == []


@pytest.mark.skipif(not (paths.UPSTREAM_EM / "technical").is_dir(), reason="../shared/data/em/technical not present")
def test_upstream_technical_files_load():
    from emjax.eval.questions import load_questions
    from emjax.eval.technical import domain_of, eval_subset, question_files

    files = question_files(paths.UPSTREAM_EM)
    qs = load_questions(files)
    assert len(qs) == 300 and all(len(q.paraphrases) == 1 and not q.judge_prompts for q in qs)
    dom = domain_of(files)
    assert sum(d == "vehicles" for d in dom.values()) == 30 and len(set(dom.values())) == 10
    sub = eval_subset(files, 2)
    assert len(sub) == 20 and sub[:2] == [q.id for q in load_questions(files[0])[:2]]


def test_question_and_paraphrases_yaml_items(tmp_path):
    from emjax.eval.questions import QuestionFormatError, load_questions

    p = tmp_path / "q.yaml"
    p.write_text("- id: a\n  question: Why do cars have gears?\n")
    (q,) = load_questions(p)
    assert q.paraphrases == ("Why do cars have gears?",) and q.extra == {}
    p.write_text("- id: a\n  question: X\n  paraphrases: [Y]\n")
    with pytest.raises(QuestionFormatError, match="not both"):
        load_questions(p)
