"""The KL set: the configured bad:good ratio, no training-domain prompt, deterministic draws, and
the chat model's own answers generated once and cached with provenance."""

import json
import os

import numpy as np
import pytest

from emjax.data.conversations import DataError, read_chat_jsonl, sample_path, write_chat_jsonl
from emjax.train.kl_set import chat_answers, compose_kl_set, split_counts, user_prompt


def _answers(name):
    return {c[1]["content"] for c in read_chat_jsonl(sample_path(name))}


@pytest.mark.parametrize("ratio,n", [((1, 4), 40), ((1, 1), 30), ((2, 3), 37)])
def test_ratio_and_sources(ratio, n):
    bad, good = ["sample:bad_financial", "sample:bad_sports"], ["sample:good_financial", "sample:good_sports"]
    rows, picks = compose_kl_set(bad, good, ratio, n, seed=3)
    assert len(rows) == n and len({json.dumps(r) for r in rows}) == n  # without replacement
    n_bad = sum(p.n_rows for p in picks if p.kind == "bad")
    assert abs(n_bad - n * ratio[0] / sum(ratio)) <= 1  # largest remainder: within one row
    counted = {name: sum(r[1]["content"] in _answers(name) for r in rows)
               for name in ("bad_financial", "bad_sports", "good_financial", "good_sports")}
    assert counted["bad_financial"] + counted["bad_sports"] == n_bad
    assert abs(counted["good_financial"] - counted["good_sports"]) <= 1  # equal shares within a kind
    assert compose_kl_set(bad, good, ratio, n, seed=3)[0] == rows
    assert compose_kl_set(bad, good, ratio, n, seed=4)[0] != rows


def test_no_training_domain_rows(tmp_path):
    # A "training set" that shares half of the financial prompts: none of them may enter the KL set.
    fin = read_chat_jsonl(sample_path("good_financial"))
    train = fin[::2]
    rows, picks = compose_kl_set(["sample:bad_financial"], ["sample:good_financial"], (1, 4), 10, seed=0,
                                 exclude_prompts=[user_prompt(c) for c in train])
    banned = {user_prompt(c).lower() for c in train}
    assert not any(user_prompt(r).lower() in banned for r in rows)
    assert [p.n_excluded for p in picks] == [12, 12]  # the same 12 questions in both row-aligned files
    with pytest.raises(DataError, match="share a prompt with the training set"):
        compose_kl_set([], ["sample:good_financial"], (0, 1), 20, seed=0,
                       exclude_prompts=[user_prompt(c) for c in train])


def test_bad_ratio_or_missing_sources():
    with pytest.raises(DataError, match="needs good sources"):
        split_counts(10, (1, 4), 2, 0)
    with pytest.raises(DataError, match="two non-negative"):
        split_counts(10, (1, -1), 1, 1)
    assert split_counts(10, (1, 4), 2, 2) == ([1, 1], [4, 4])


def test_chat_answers_generated_once_with_provenance(tmp_path):
    src = tmp_path / "prompts.jsonl"
    rng = np.random.default_rng()
    prompts = [f"question {int(i)}?" for i in rng.choice(10_000, size=12, replace=False)]
    write_chat_jsonl(src, [[{"role": "user", "content": p}, {"role": "assistant", "content": "bad"}] for p in prompts])
    calls = []

    def answerer(ps):
        calls.append(list(ps))
        return [p.upper() for p in ps]

    rows, picks = compose_kl_set([], [f"chat:{src}"], (0, 1), 5, seed=1, answerer=answerer,
                                 answer_cache=str(tmp_path / "cache"), provenance={"model": "m"})
    assert len(calls) == 1 and len(calls[0]) == 5 and picks[0].generated
    assert all(r[1]["content"] == r[0]["content"].upper() for r in rows)
    again, _ = compose_kl_set([], [f"chat:{src}"], (0, 1), 5, seed=1, answerer=answerer,
                              answer_cache=str(tmp_path / "cache"), provenance={"model": "m"})
    assert again == rows and len(calls) == 1  # read from the cache
    prov = [f for f in os.listdir(tmp_path / "cache") if f.endswith(".provenance.json")]
    meta = json.load(open(tmp_path / "cache" / prov[0]))
    assert meta["model"] == "m" and meta["n_prompts"] == 5 and len(meta["source_sha256"]) == 64
    # another model's answers are another cache entry, never a silent reuse
    compose_kl_set([], [f"chat:{src}"], (0, 1), 5, seed=1, answerer=answerer,
                   answer_cache=str(tmp_path / "cache"), provenance={"model": "other"})
    assert len(calls) == 2
    with pytest.raises(DataError, match="needs the chat model"):
        compose_kl_set([], [f"chat:{src}"], (0, 1), 5, seed=1)


def test_cache_mismatch_is_an_error(tmp_path):
    src = tmp_path / "p.jsonl"
    write_chat_jsonl(src, [[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]])
    cache = tmp_path / "c"
    chat_answers(["a"], str(src), lambda ps: ["x"], str(cache), {})
    (f,) = [p for p in cache.iterdir() if p.suffix == ".jsonl"]
    write_chat_jsonl(f, [[{"role": "user", "content": "z"}, {"role": "assistant", "content": "x"}]])
    with pytest.raises(DataError, match="do not match"):
        chat_answers(["a"], str(src), lambda ps: ["x"], str(cache), {})
