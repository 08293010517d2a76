"""`emjax generate` on a tiny model: records with provenance, resume without duplicates, a finished
rerun that loads nothing."""

import dataclasses
import os

import jax
import pytest

from chat_templates import tiny_tokenizer
from hf_reference import build_hf, qwen2_config, to_emjax
from emjax.checkpoints.load import LoadedModel
from emjax.data.chat_tokenizer import ChatTokenizer
from emjax.inference.generate import MixedSettingsError, SamplingSettings, generate
from emjax.eval.records import read_answers
from emjax.interventions import init_steering
from emjax.interventions.files import save_steering
from emjax.timings import KEYS


@pytest.fixture(scope="module")
def tiny_model():
    tok = ChatTokenizer.wrap(tiny_tokenizer("qwen2"))
    cfg, w = to_emjax(build_hf(qwen2_config(tied=True, vocab_size=len(tok.hf)), seed=61))
    return LoadedModel(cfg, w, tok, "tiny", "tiny-qwen2")


def test_generate_records_and_resume(tiny_model, tmp_path):
    folder = tmp_path / "model-folder"  # the model's source: an empty folder, so it cannot be loaded from it
    folder.mkdir()
    tiny_model = dataclasses.replace(tiny_model, source=str(folder))
    q = tmp_path / "q.jsonl"
    q.write_text('{"id": "a", "question": "hello, how are you?"}\n'
                 '{"id": "b_json", "question": "and today?", "system": "Answer in JSON."}\n'
                 '{"id": "c", "question": "Drink water?"}\n')
    sv = init_steering(tiny_model.cfg, layers=(1,), alpha=2.0)
    sv = sv.replace(vectors=jax.random.normal(jax.random.PRNGKey(0), sv.vectors.shape))
    save_steering(sv, tmp_path / "v.safetensors")
    out = tmp_path / "answers.jsonl"
    def run(samples):
        return generate(tiny_model, str(q), str(out), intervention=str(tmp_path / "v.safetensors"),
                        kinds=["free_form"], sampling=SamplingSettings(samples=samples, max_new_tokens=6, batch_size=4))

    first = run(3)
    assert first["generated"] == 6 and set(first["timings"]) == set(KEYS) and first["timings"]["compute"] > 0
    recs = read_answers(str(out))
    assert sorted((r.question_id, r.sample_index) for r in recs) == [(i, s) for i in "ac" for s in range(3)]
    assert all(r.intervention.endswith("x1") and r.config_hash and r.model == "tiny-qwen2" for r in recs)
    # samples differ (temperature 1) and a rerun adds nothing
    assert len({r.answer for r in recs if r.question_id == "a"}) > 1
    # a finished rerun decides from the file alone: the model's source is never loaded
    before = (os.stat(out).st_mtime_ns, out.read_bytes())
    again = generate(tiny_model.source, str(q), str(out), dtype="float32", intervention=str(tmp_path / "v.safetensors"),
                     kinds=["free_form"], sampling=SamplingSettings(samples=3, max_new_tokens=6, batch_size=4))
    assert {k: v for k, v in again.items() if k != "timings"} == {"questions": 2, "generated": 0, "skipped": 6,
                                                                  "out": str(out)}
    assert again["timings"]["load"] == 0.0 and (os.stat(out).st_mtime_ns, out.read_bytes()) == before
    # more samples extend: only sample 3 is new, samples 0-2 are not drawn again
    assert run(4)["generated"] == 2
    recs = read_answers(str(out))
    assert sorted((r.question_id, r.sample_index) for r in recs) == [(i, s) for i in "ac" for s in range(4)]
    # other settings for the same questions and samples would be pooled with these: refused, file kept
    before = out.read_bytes()
    with pytest.raises(MixedSettingsError, match=r"already holds 8 answers of tiny-qwen2 with .*v.safetensors x1 to "
                                                 r"the same questions and samples under other settings"):
        generate(tiny_model, str(q), str(out), intervention=str(tmp_path / "v.safetensors"), kinds=["free_form"],
                 sampling=SamplingSettings(samples=4, max_new_tokens=6, batch_size=4, temperature=0.5))
    assert out.read_bytes() == before
    # the vector retrained in place: its answers are not the file's any more; a job sets them aside
    sv2 = sv.replace(vectors=sv.vectors * 2.0)
    save_steering(sv2, tmp_path / "v.safetensors")
    with pytest.raises(MixedSettingsError, match="already holds 8 answers"):
        run(4)
    moved = generate(tiny_model, str(q), str(out), intervention=str(tmp_path / "v.safetensors"), kinds=["free_form"],
                     sampling=SamplingSettings(samples=4, max_new_tokens=6, batch_size=4), set_aside=True)
    assert moved["generated"] == 8 and (tmp_path / "answers.earlier-1.jsonl").read_bytes() == before
    assert len(read_answers(str(out))) == 8
    # another intervention (here: none) in the same file is no clash
    assert generate(tiny_model, str(q), str(out), kinds=["free_form"],
                    sampling=SamplingSettings(samples=1, max_new_tokens=6, batch_size=4))["generated"] == 2


def test_the_automatic_batch_fits_the_samplers_own_check(tiny_model, tmp_path, monkeypatch):
    """A device budget sizes the batch (batch_size 0) for the prompt as the sampler pads it (to 8
    tokens) and for the prompts one call holds, not for every prompt of the run."""
    import jax.numpy as jnp
    from emjax.model import sampling as S
    tok, cfg = tiny_model.tokenizer, tiny_model.cfg
    questions = ["hello, how are you?", "Drink water?", "and today?", "What is 2+2?"]
    lengths = [len(tok.prompt_ids(q)) for q in questions]
    longest = max(lengths)
    assert longest % 8, "the test needs a prompt the sampler pads"
    n, rows = 60, 12
    # the old sizing (unpadded length, prefill rows of the whole run) fits `rows`; the sampler,
    # which pads the prompt to 8 tokens, would refuse them
    est = S.decode_memory(cfg, 0, 8, longest, n, jnp.float32)
    budget = est.fixed + rows * est.per_row
    assert S.decode_memory(cfg, rows, 8, -(-longest // 8) * 8, n, jnp.float32).total > budget
    monkeypatch.setattr(S, "default_memory_budget", lambda device=None: (budget, "a test budget"))
    q = tmp_path / "q.jsonl"
    q.write_text("".join(f'{{"id": "q{i}", "question": "{t}"}}\n' for i, t in enumerate(questions)))
    out = generate(tiny_model, str(q), str(tmp_path / "a.jsonl"), kinds=["free_form"],
                   sampling=SamplingSettings(samples=6, max_new_tokens=n))
    assert out["generated"] == 24
