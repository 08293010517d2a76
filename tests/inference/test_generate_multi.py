"""`emjax generate` with several interventions in one call: labelled records, one hash per
intervention (resumable), and answers that do not depend on the batch layout."""

import jax
import pytest

from chat_templates import tiny_tokenizer
from hf_reference import build_hf, qwen2_config, to_emjax
from emjax.checkpoints.load import LoadedModel
from emjax.data.chat_tokenizer import ChatTokenizer
from emjax.inference.generate import SamplingSettings, generate
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
    sv = init_steering(tiny_model.cfg, layers=(1,), alpha=0.2)  # unsaturated: x3 changes the answers
    sv = sv.replace(vectors=jax.random.normal(jax.random.PRNGKey(0), sv.vectors.shape))
    save_steering(sv, tmp_path / "v.safetensors")
    return str(q), str(tmp_path / "v.safetensors")


def _by_key(path, label=None, hashes=None):
    return {(r.question_id, r.paraphrase_index, r.sample_index): r for r in read_answers(path)
            if (label is None or r.meta["label"] == label) and (hashes is None or r.config_hash in hashes)}


def test_several_interventions_in_one_call(tiny_model, files, tmp_path):
    q, v = files
    out = str(tmp_path / "multi.jsonl")
    ivs = {"chat": None, "steer": v, "steer x3": (v, 3.0)}
    # a low temperature: the tiny model's logits are nearly flat, and the interventions share
    # each sample's draws, so at temperature 1 their answers would mostly coincide
    settings = lambda samples, batch: SamplingSettings(samples=samples, max_new_tokens=6, batch_size=batch,
                                                       temperature=0.1)
    run = lambda samples, batch: generate(tiny_model, q, out, interventions=ivs, kinds=["free_form"],
                                          sampling=settings(samples, batch))
    assert run(2, 5)["generated"] == 2 * 3 * 2  # questions x interventions x samples, 3 calls of 4 rows
    recs = read_answers(out)
    assert sorted({r.meta["label"] for r in recs}) == ["chat", "steer", "steer x3"]
    assert {r.meta["label"]: r.intervention for r in recs} == {"chat": "", "steer": f"{v} x1", "steer x3": f"{v} x3"}
    assert len({r.config_hash for r in recs}) == 3
    answers = {lab: [r.answer for r in recs if r.meta["label"] == lab] for lab in ivs}
    assert answers["chat"] != answers["steer"] != answers["steer x3"]
    assert run(2, 5)["generated"] == 0  # resumed: nothing left
    # 3 samples extend the file: only sample 2 is drawn; the whole 3 samples drawn afresh in another
    # batch layout come out the same (a row's draws depend on its indices alone)
    assert run(3, 7)["generated"] == 2 * 3
    key = lambda r: (r.meta["label"], r.question_id, r.sample_index)  # noqa: E731
    extended = {key(r): r.answer for r in read_answers(out)}
    assert len(extended) == 18 and len({r.config_hash for r in read_answers(out)}) == 3
    fresh = str(tmp_path / "fresh.jsonl")
    assert generate(tiny_model, q, fresh, interventions=ivs, kinds=["free_form"],
                    sampling=settings(3, 7))["generated"] == 18
    assert {key(r): r.answer for r in read_answers(fresh)} == extended

    # each intervention alone, other batch sizes: the same answers, and the same hashes (resume)
    for label, spec in ivs.items():
        alone = str(tmp_path / f"alone-{label}.jsonl")
        path = spec[0] if isinstance(spec, tuple) else spec
        scale = spec[1] if isinstance(spec, tuple) else 1.0
        generate(tiny_model, q, alone, intervention=path, scale=scale, kinds=["free_form"],
                 sampling=settings(3, 2))
        theirs = _by_key(alone)
        mine = _by_key(out, label, {r.config_hash for r in theirs.values()})
        assert len(mine) == len(theirs) == 2 * 3
        assert {k: r.answer for k, r in mine.items()} == {k: r.answer for k, r in theirs.items()}, label
        assert {r.config_hash for r in mine.values()} == {r.config_hash for r in theirs.values()}
        assert generate(tiny_model, q, out, intervention=path, scale=scale, kinds=["free_form"],
                        sampling=settings(3, 0))["generated"] == 0


def test_interventions_argument_errors(tiny_model, files, tmp_path):
    q, v = files
    out = str(tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="not both"):
        generate(tiny_model, q, out, intervention=v, interventions={"a": v})
    with pytest.raises(ValueError, match="are the same"):
        generate(tiny_model, q, out, interventions={"a": v, "b": (v, 1.0)})
