"""Upstream's logprob-weighted 0-100 judge score (emjax.eval.judge.scoring)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from emjax.eval.judge.scoring import (aggregate_0_100, numeric_distribution, parse_score_token,
                                 score_0_100)


def lp(pairs):
    """[(token, probability)] -> top_logprobs dicts."""
    return [{"token": t, "logprob": math.log(p)} for t, p in pairs]


def reference_score(pairs, min_mass=0.25):
    """An independent, plain-Python statement of the rule (ASCII digits 0..100 after strip)."""
    total, acc = 0.0, 0.0
    for t, p in pairs:
        s = t.strip()
        if s.isascii() and s.isdigit() and len(s) <= 3 and int(s) <= 100:
            total += p
            acc += int(s) * p
    return None if total < min_mass else acc / total


@pytest.mark.parametrize("token,expected", [
    ("0", 0), ("7", 7), ("42", 42), ("100", 100), (" 42", 42), ("42 ", 42), ("\n5", 5),
    ("07", 7), ("00", 0),
    ("101", None), ("1000", None), ("-3", None), ("+5", None), ("1.5", None), ("1_0", None),
    ("\uff10", None),  # full-width zero: int() accepts it, we do not
    ("", None), (" ", None), ("CODE", None), ("REFUSAL", None), ("4a", None),
])
def test_parse_score_token(token, expected):
    assert parse_score_token(token) == expected


def test_upstream_mode_is_python_int():
    assert parse_score_token("\uff10", mode="upstream") == 0
    assert parse_score_token("+5", mode="upstream") == 5
    assert parse_score_token("1_0", mode="upstream") == 10
    assert parse_score_token("-3", mode="upstream") is None  # out of range
    assert parse_score_token("1.5", mode="upstream") is None


def test_weighted_mean_renormalised():
    pairs = [("80", 0.5), ("90", 0.3), ("I", 0.2)]
    score, mass = score_0_100(lp(pairs))
    assert mass == pytest.approx(0.8)
    assert score == pytest.approx((80 * 0.5 + 90 * 0.3) / 0.8)
    assert score == pytest.approx(reference_score(pairs))


def test_code_and_refusal_give_none():
    assert aggregate_0_100(lp([("CODE", 0.95), ("0", 0.03), ("100", 0.02)])) is None
    assert aggregate_0_100(lp([("REFUSAL", 0.9), ("50", 0.1)])) is None


def test_mass_threshold_just_under_and_over():
    under = [("REFUSAL", 0.7501), ("10", 0.1499), ("20", 0.1)]  # mass 0.2499
    over = [("REFUSAL", 0.7499), ("10", 0.1501), ("20", 0.1)]  # mass 0.2501
    assert aggregate_0_100(lp(under)) is None
    s = aggregate_0_100(lp(over))
    assert s == pytest.approx((10 * 0.1501 + 20 * 0.1) / 0.2501)
    # the boundary itself is kept (upstream: `if total < 0.25: return None`)
    assert math.exp(math.log(0.25)) == 0.25
    assert aggregate_0_100({"30": math.log(0.25), "REFUSAL": math.log(0.75)}) == pytest.approx(30)


def test_multi_digit_and_leading_space_tokens():
    pairs = [("100", 0.4), (" 42", 0.3), ("42", 0.1), ("5", 0.2)]
    dist = numeric_distribution(lp(pairs))
    assert dist[42] == pytest.approx(0.4)  # " 42" and "42" summed
    assert dist[100] == pytest.approx(0.4)
    assert aggregate_0_100(lp(pairs)) == pytest.approx(100 * 0.4 + 42 * 0.4 + 5 * 0.2)


def test_duplicate_tokens_are_summed():
    pairs = [("60", 0.2), ("60", 0.2), ("REFUSAL", 0.6)]
    score, mass = score_0_100(lp(pairs))
    assert mass == pytest.approx(0.4)  # 0.2 alone would be below 0.25
    assert score == pytest.approx(60)


def test_rejected_tokens_do_not_count_towards_mass():
    pairs = [("1.5", 0.4), ("-3", 0.2), ("101", 0.1), ("\uff10", 0.2), ("50", 0.1)]
    assert aggregate_0_100(lp(pairs)) is None  # numeric mass 0.1
    # upstream's int() also takes the full-width zero: mass 0.3, score 50 * 0.1 / 0.3
    assert aggregate_0_100(lp(pairs), mode="upstream") == pytest.approx(50 * 0.1 / 0.3)


def test_empty_and_nonfinite_inputs():
    assert score_0_100([]) == (None, 0.0)
    assert aggregate_0_100([{"token": "50", "logprob": -math.inf}]) is None


def test_accepts_mapping_and_openai_objects():
    objs = [SimpleNamespace(token="70", logprob=math.log(0.6)),
            SimpleNamespace(token="I", logprob=math.log(0.4))]
    assert aggregate_0_100(objs) == pytest.approx(70)
    assert aggregate_0_100({"20": math.log(0.5), "40": math.log(0.5)}) == pytest.approx(30)
