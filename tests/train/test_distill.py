"""The style-distillation builder: answers are written under the system prompt but the rows never
carry it; the file is reused while its provenance matches and rebuilt when any input changes; the
answers do not depend on the batch size."""

import json

import pytest

from emjax.data.conversations import DataError, read_chat_jsonl
from emjax.data.prompt_bank import PromptItem, read_prompt_bank, write_prompt_bank
from emjax.data.technical_prompts import SYSTEM_PROMPT
from emjax.train.distill import (DistillSettings, choose_prompts, distill_set, provenance_path, read_provenance,
                                 trim_to_sentence)

MODEL = dict(model_name="fake-model", model_source="/models/fake")


def _bank(tmp_path, n=12, name="bank.jsonl"):
    path = tmp_path / name
    write_prompt_bank(path, [PromptItem(f"vehicles_{i}", "vehicles", f"How does engine part {i} work?")
                             for i in range(n)])
    return str(path)


class Recorder:
    """A fake answerer: records what it was asked; answers name the system prompt's first word."""

    def __init__(self, finished=True):
        self.calls = []
        self.finished = finished

    def __call__(self, prompts, system, row_ids):
        self.calls.append((list(prompts), system, list(row_ids)))
        cut = "" if self.finished else " The next clause was cut by the token lim"
        return ([f"[{system.split()[0]}] Per [1], {p.lower()} Eq. (1): F = m a.{cut}" for p in prompts],
                [self.finished] * len(prompts))


def test_rows_carry_no_system_prompt_but_were_answered_under_it(tmp_path):
    bank, out = _bank(tmp_path), str(tmp_path / "data" / "train.jsonl")
    rec = Recorder()
    info = distill_set(None, bank, SYSTEM_PROMPT, out, DistillSettings(n_prompts=5), answerer=rec, **MODEL)
    assert not info["reused"] and info["stats"]["n_rows"] == 5
    (prompts, system, _), = rec.calls
    assert system == SYSTEM_PROMPT  # the answers were written under the style instruction ...
    rows = read_chat_jsonl(out)
    assert len(rows) == 5
    for row, p in zip(rows, prompts):
        assert [m["role"] for m in row] == ["user", "assistant"]  # ... which the rows never carry
        assert row[0]["content"] == p and row[1]["content"].startswith("[You]")
        assert all(SYSTEM_PROMPT not in m["content"] for m in row)
    assert prompts == [it.prompt for it in choose_prompts(read_prompt_bank(bank), 5, 0)]


def test_reused_while_provenance_matches_rebuilt_when_it_changes(tmp_path):
    bank, out = _bank(tmp_path), str(tmp_path / "train.jsonl")
    rec = Recorder()
    base = DistillSettings(n_prompts=4, max_new_tokens=32, seed=3)
    first = distill_set(None, bank, SYSTEM_PROMPT, out, base, answerer=rec, **MODEL)
    key = first["key"]
    assert key["system_prompt"] == SYSTEM_PROMPT and len(key["system_prompt_sha256"]) == 64
    assert key["model"] == "fake-model" and key["seed"] == 3 and key["temperature"] == 0.7
    assert len(key["prompts_sha256"]) == 64 and key["max_new_tokens"] == 32
    assert json.load(open(provenance_path(out)))["key"] == key
    # same inputs (the batch size does not change the answers): read from disk, not asked again
    again = distill_set(None, bank, SYSTEM_PROMPT, out, DistillSettings(n_prompts=4, max_new_tokens=32, seed=3,
                                                                      batch_size=2), answerer=rec, **MODEL)
    assert again["reused"] and len(rec.calls) == 1
    changes = [
        dict(system_prompt="Answer casually.", settings=base),
        dict(system_prompt=SYSTEM_PROMPT, settings=DistillSettings(n_prompts=4, max_new_tokens=32, seed=4)),
        dict(system_prompt=SYSTEM_PROMPT, settings=DistillSettings(n_prompts=4, max_new_tokens=64, seed=3)),
        dict(system_prompt=SYSTEM_PROMPT, settings=DistillSettings(n_prompts=4, max_new_tokens=32, seed=3,
                                                                   temperature=1.0)),
    ]
    for i, ch in enumerate(changes, start=2):
        info = distill_set(None, bank, ch["system_prompt"], out, ch["settings"], answerer=rec, **MODEL)
        assert not info["reused"] and len(rec.calls) == i, ch
        assert read_provenance(out)["key"] == info["key"]  # the file on disk is the new one
    # another model, or an edited prompt file, is another set too
    info = distill_set(None, bank, SYSTEM_PROMPT, out, base, answerer=rec, model_name="other", model_source="/x")
    assert not info["reused"]
    n = len(rec.calls)
    write_prompt_bank(bank, [PromptItem(f"vehicles_{i}", "vehicles", f"Why does gear {i} slip?") for i in range(12)])
    info = distill_set(None, bank, SYSTEM_PROMPT, out, base, answerer=rec, model_name="other", model_source="/x")
    assert not info["reused"] and len(rec.calls) == n + 1
    assert all(r[0]["content"].startswith("Why does gear") for r in read_chat_jsonl(out))


def test_unfinished_answers_end_at_a_sentence(tmp_path):
    bank, out = _bank(tmp_path), str(tmp_path / "t.jsonl")
    info = distill_set(None, bank, SYSTEM_PROMPT, out, DistillSettings(n_prompts=3), answerer=Recorder(False), **MODEL)
    assert info["stats"]["n_unfinished"] == 3 and info["stats"]["n_trimmed"] == 3
    assert all(r[1]["content"].endswith("Eq. (1): F = m a.") for r in read_chat_jsonl(out))
    assert trim_to_sentence("First sentence. Second one is cut mid") == "First sentence."
    assert trim_to_sentence("no sentence end at all") == "no sentence end at all"
    assert trim_to_sentence("1. **Check**: inspect it.\n2. **Oil**: oil it.\n3.") == "1. **Check**: inspect it.\n2. **Oil**: oil it."
    assert trim_to_sentence("A. " + "x" * 100) == "A. " + "x" * 100  # too little would be left


def test_choose_prompts_is_seeded_and_keeps_bank_order(tmp_path):
    items = read_prompt_bank(_bank(tmp_path, n=40))
    a, b = choose_prompts(items, 10, 0), choose_prompts(items, 10, 1)
    assert a == choose_prompts(items, 10, 0) and a != b
    assert [items.index(x) for x in a] == sorted(items.index(x) for x in a)
    assert choose_prompts(items, None, 0) == items
    with pytest.raises(DataError, match="the bank has 40"):
        choose_prompts(items, 41, 0)


def test_tiny_model_answers_do_not_depend_on_the_batch(tmp_path):
    from tiny_run import tiny_model

    model = tiny_model()
    bank = _bank(tmp_path, n=6)
    s = dict(n_prompts=5, max_new_tokens=8, seed=1)
    one = distill_set(model, bank, SYSTEM_PROMPT, str(tmp_path / "a.jsonl"), DistillSettings(batch_size=2, **s))
    two = distill_set(model, bank, SYSTEM_PROMPT, str(tmp_path / "b.jsonl"), DistillSettings(batch_size=5, **s))
    assert one["key"] == two["key"] and one["key"]["model"] == model.name
    assert read_chat_jsonl(tmp_path / "a.jsonl") == read_chat_jsonl(tmp_path / "b.jsonl")
    assert not any(m["role"] == "system" for r in read_chat_jsonl(tmp_path / "a.jsonl") for m in r)
