"""`emjax generate` with several interventions in one call: labelled records, one hash per
intervention (resumable), and answers that do not depend on the batch layout."""

import jax
import pytest

from chat_templates import tiny_tokenizer
from hf_reference import build_hf, qwen2_config, to_emjax
from emjax.checkpoints.load import LoadedModel
from emjax.data.chat_tokenizer import ChatTokenizer
from emjax.eval.generate import SamplingSettings, generate
from emjax.eval.records import read_answers
from emjax.interventions import init_steering
from emjax.interventions.files import save_steering


@pytest.fixture(scope="module")
def tiny_model():
    tok = ChatTokenizer.wrap(tiny_tokenizer("qwen2"))
    cfg, w = to_emjax(build_hf(qwen2_config(tied=True, vocab_size=len(tok.hf)), seed=61))
    return LoadedModel(cfg, w, tok, "tiny", "tiny-qwen2")


@pytest.fixture()
def files(tiny_model, tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text('{"id": "a", "question": "hello, how are you?"}\n'
                 '{"id": "c", "question": "Drink water?"}\n')
    sv = init_steering(tiny_model.cfg, layers=(1,), alpha=2.0)
    sv = sv.replace(vectors=jax.random.normal(jax.random.PRNGKey(0), sv.vectors.shape))
    save_steering(sv, tmp_path / "v.safetensors")
    return str(q), str(tmp_path / "v.safetensors")


def _by_key(path, label=None):
    return {(r.question_id, r.paraphrase_index, r.sample_index): r for r in read_answers(path)
            if label is None or r.meta["label"] == label}


def test_several_interventions_in_one_call(tiny_model, files, tmp_path):
    q, v = files
    out = str(tmp_path / "multi.jsonl")
    ivs = {"chat": None, "steer": v, "steer x3": (v, 3.0)}
    run = lambda samples, batch: generate(tiny_model, q, out, interventions=ivs, kinds=["free_form"],
                                          sampling=SamplingSettings(samples=samples, max_new_tokens=6,
                                                                    batch_size=batch))
    assert run(2, 5)["generated"] == 2 * 3 * 2  # questions x interventions x samples, 3 calls of 4 rows
    recs = read_answers(out)
    assert sorted({r.meta["label"] for r in recs}) == ["chat", "steer", "steer x3"]
    assert {r.meta["label"]: r.intervention for r in recs} == {"chat": "", "steer": f"{v} x1", "steer x3": f"{v} x3"}
    assert len({r.config_hash for r in recs}) == 3
    answers = {lab: [r.answer for r in recs if r.meta["label"] == lab] for lab in ivs}
    assert answers["chat"] != answers["steer"] != answers["steer x3"]
    assert run(2, 5)["generated"] == 0  # resumed: nothing left
    assert run(3, 7)["generated"] == 2 * 3  # one more sample of each, other batch layout

    # each intervention alone, other batch sizes: the same answers, and the same hashes (resume)
    for label, spec in ivs.items():
        alone = str(tmp_path / f"alone-{label}.jsonl")
        path = spec[0] if isinstance(spec, tuple) else spec
        scale = spec[1] if isinstance(spec, tuple) else 1.0
        generate(tiny_model, q, alone, intervention=path, scale=scale, kinds=["free_form"],
                 sampling=SamplingSettings(samples=3, max_new_tokens=6, batch_size=2))
        mine, theirs = _by_key(out, label), _by_key(alone)
        assert {k: r.answer for k, r in mine.items()} == {k: r.answer for k, r in theirs.items()}, label
        assert {r.config_hash for r in mine.values()} == {r.config_hash for r in theirs.values()}
        assert generate(tiny_model, q, out, intervention=path, scale=scale, kinds=["free_form"],
                        sampling=SamplingSettings(samples=3, max_new_tokens=6))["generated"] == 0


def test_interventions_argument_errors(tiny_model, files, tmp_path):
    q, v = files
    out = str(tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="not both"):
        generate(tiny_model, q, out, intervention=v, interventions={"a": v})
    with pytest.raises(ValueError, match="are the same"):
        generate(tiny_model, q, out, interventions={"a": v, "b": (v, 1.0)})
