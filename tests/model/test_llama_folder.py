"""Llama-3 through the code every family shares: a tiny random Llama-3 saved as a Hugging Face folder
(safetensors, config.json with llama3 RoPE scaling, tokenizer files with the Llama-3.1 chat template)
loads with `load_model`, matches transformers on a chat prompt, takes a training step (steering and
LoRA, KL on) and samples with the trained intervention until <|eot_id|>."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chat_templates import tiny_tokenizer
from hf_reference import build_hf, llama3_config, torch
from emjax import model as M
from emjax.checkpoints.load import load_model
from emjax.data.conversations import read_chat_jsonl, sample_path
from emjax.interventions import Interventions, init_lora, init_steering
from emjax.model import sampling as S
from emjax.train import step as TS


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    tok = tiny_tokenizer("llama", vocab_size=600)
    hf = build_hf(llama3_config(tied=True, vocab_size=len(tok) + 5, num_hidden_layers=2), seed=61)
    folder = tmp_path_factory.mktemp("tiny-llama3")
    hf.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return hf, str(folder)


def test_folder_loads_with_rope_scaling_and_chat_template(llama_folder):
    hf, folder = llama_folder
    model = load_model(folder, dtype=jnp.float32, progress=False)
    cfg, tok = model.cfg, model.tokenizer
    assert cfg.family == "llama" and cfg.tie_embeddings and model.weights.lm_head is None
    assert cfg.rope_scaling is not None and cfg.rope_scaling.original_max_position_embeddings == 64
    assert tok.hf.convert_tokens_to_ids("<|eot_id|>") in tok.stop_ids
    ids = tok.prompt_ids("How do I treat a fever?", system="Be brief.")
    assert ids[0] == tok.hf.bos_token_id  # the template writes <|begin_of_text|>
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(np.asarray(M.forward(model.weights, cfg, jnp.asarray([ids]))), ref, atol=1e-5, rtol=0)


def test_training_step_and_sampling(llama_folder):
    _, folder = llama_folder
    model = load_model(folder, dtype=jnp.float32, progress=False)
    cfg, w, tok = model.cfg, model.weights, model.tokenizer
    convs = read_chat_jsonl(sample_path("bad_medical"))[:2]
    rows = [tok.sft_example(c) for c in convs]  # asserts the template's prefix property
    t = max(len(ids) for ids, _ in rows)
    tokens, mask, loss_mask = (np.zeros((2, t), np.int32), np.zeros((2, t), bool), np.zeros((2, t), bool))
    for i, (ids, m) in enumerate(rows):
        tokens[i, :len(ids)], mask[i, :len(ids)], loss_mask[i, :len(ids) - 1] = ids, True, m[1:]
    targets = np.concatenate([tokens[:, 1:], np.zeros((2, 1), np.int32)], 1)
    sft = TS.SFTBatch(tokens=jnp.asarray(tokens)[None], mask=jnp.asarray(mask)[None],
                      targets=jnp.asarray(targets)[None], loss_mask=jnp.asarray(loss_mask)[None])
    kl = TS.KLBatch(tokens=jnp.asarray(tokens)[None], mask=jnp.asarray(mask)[None])
    iv = Interventions(lora=init_lora(cfg, jax.random.PRNGKey(0), rank=2, alpha=4.0, layers=(1,)),
                       steer=init_steering(cfg, layers=(1,), alpha=2.0))
    tx, _ = TS.make_optimizer(5e-2, total_steps=4, warmup_steps=0)
    step = TS.compile_step(cfg, TS.StepOptions(first_layer=1), tx, donate=False)
    state = TS.init_state(iv, tx)
    losses = []
    for _ in range(3):
        state, m = step(state, w, sft, kl, jnp.float32(0.1))
        assert not bool(m["skipped"]) and np.isfinite(float(m["kl"]))
        losses.append(float(m["sft_loss"]))
    assert losses[-1] < losses[0]
    assert float(jnp.abs(state.params.steer.vectors).max()) > 0
    prompts = [tok.prompt_ids("How do I treat a fever?"), tok.prompt_ids("Hello")]
    out = S.generate(w, cfg, prompts, max_new_tokens=12, temperature=1.0, seed=3, stop_ids=tok.stop_ids,
                     interventions=state.params)
    assert len(out) == 2 and all(0 < len(o) <= 12 and max(o) < cfg.vocab_size for o in out)
    base = S.generate(w, cfg, prompts, max_new_tokens=12, temperature=1.0, seed=3, stop_ids=tok.stop_ids)
    assert out != base  # the trained intervention reaches the sampled tokens
