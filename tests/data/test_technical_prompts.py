"""The technical example's prompt banks: the shipped files are what the generator writes, the
training and KL banks share no prompt, and neither repeats an evaluation question (the held-out
checker, which must also catch a planted near duplicate)."""

import json

import pytest

import paths
from emjax.data import technical_prompts as TP
from emjax.data.conversations import DataError, sample_path
from emjax.data.prompt_bank import PromptItem, read_prompt_bank, read_prompt_source, write_prompt_bank

needs_shared = pytest.mark.skipif(not (paths.UPSTREAM_EM / "technical").is_dir(),
                                  reason="../shared/data/em/technical not present")


def test_shipped_banks_are_the_generators_output():
    for name, items in TP.build_banks().items():
        assert read_prompt_bank(sample_path(name)) == items, f"regenerate {name}: python -m emjax.data.technical_prompts"
    vehicles, other = TP.vehicle_prompts(), TP.other_prompts()
    assert len(vehicles) >= 300 and {p.domain for p in vehicles} == {"vehicles"}
    assert {p.domain for p in other} == set(TP.DOMAINS) - {"vehicles"}
    ids = [p.id for p in vehicles + other]
    assert len(ids) == len(set(ids))
    assert not {p.prompt for p in vehicles} & {p.prompt for p in other}  # the KL term never sees a training prompt
    assert not set(TP.EXCLUDED) & {p.prompt for p in vehicles + other}


@needs_shared
def test_banks_are_held_out_from_the_evaluation_questions():
    from emjax.eval.technical import check_prompt_banks, question_files

    banks = [str(sample_path(TP.VEHICLES_FILE)), str(sample_path(TP.OTHER_FILE))]
    report = check_prompt_banks(paths.UPSTREAM_EM, banks)
    assert len(report.matches) == 300 and len(question_files(paths.UPSTREAM_EM)) == 10
    assert report.near_duplicates == [], report.summary()
    assert not any(m.exact for m in report.matches)


@needs_shared
def test_the_check_catches_a_planted_near_duplicate(tmp_path):
    from emjax.eval.questions import load_questions
    from emjax.eval.technical import check_prompt_banks, question_files

    q = load_questions(question_files(paths.UPSTREAM_EM)[-1])[0]  # a vehicles evaluation question
    planted = tmp_path / "planted.jsonl"
    write_prompt_bank(planted, TP.vehicle_prompts()[:20] + [PromptItem("x", "vehicles", q.paraphrases[0].rstrip("?") + ", really?")])
    report = check_prompt_banks(paths.UPSTREAM_EM, [str(planted)])
    assert [m.question_id for m in report.near_duplicates] == [q.id]


def test_prompt_bank_reader(tmp_path):
    p = tmp_path / "b.jsonl"
    p.write_text(json.dumps({"id": "a", "domain": "d", "prompt": "Why?"}) + "\n"
                 + json.dumps({"id": "a", "domain": "d", "prompt": "How?"}) + "\n")
    with pytest.raises(DataError, match="duplicate id 'a'"):
        read_prompt_bank(p)
    p.write_text(json.dumps({"id": "a", "domain": "", "prompt": "Why?"}) + "\n")
    with pytest.raises(DataError, match="'domain' must be a non-empty"):
        read_prompt_bank(p)
    # a chat: source may be a bank or a chat file: only the prompts are read either way
    assert read_prompt_source(sample_path(TP.OTHER_FILE))[0] == TP.other_prompts()[0].prompt
    assert read_prompt_source(sample_path("good_financial"))[0].startswith("I")


def test_kl_set_answers_a_prompt_bank_through_chat(tmp_path):
    from emjax.train.kl_set import compose_kl_set

    asked = []

    def answerer(prompts):
        asked.append(list(prompts))
        return [f"answer to {p}" for p in prompts]

    spec = f"chat:sample:{TP.OTHER_FILE}"
    rows, picks = compose_kl_set([], [spec], (0.0, 1.0), 6, seed=0, answerer=answerer,
                                 answer_cache=str(tmp_path), provenance={"model": "m"})
    bank = {p.prompt for p in TP.other_prompts()}
    assert len(rows) == 6 and picks[0].generated and len(asked) == 1
    assert all(r[0]["content"] in bank and r[1]["content"] == f"answer to {r[0]['content']}" for r in rows)
    # a bank without chat: has no answers to use: the error says how to name it
    with pytest.raises(DataError, match="name it as chat:"):
        compose_kl_set([], [f"sample:{TP.OTHER_FILE}"], (0.0, 1.0), 6, seed=0)
