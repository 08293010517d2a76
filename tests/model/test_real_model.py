"""The embedded real model (Qwen2.5-Coder-0.5B-Instruct GGUF): emjax vs transformers."""

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import requires_embedded
from emjax import model as M

pytestmark = [requires_embedded, pytest.mark.real_weights, pytest.mark.slow]

PROMPTS = [
    [{"role": "user", "content": "Write a Python function that checks whether a number is prime."}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "What is the boiling point of water at sea level?"}],
    [{"role": "user", "content": "I have a headache and a mild fever. What should I do?"},
     {"role": "assistant", "content": "Rest, drink fluids, and see a doctor if it gets worse."},
     {"role": "user", "content": "Can I take ibuprofen?"}],
]

# Measured on CPU (float32 both sides): max |diff| about 1e-4 on logits of magnitude ~30, see
# the printed value; the bound leaves headroom for other BLAS builds.
MAX_ABS_DIFF = 2e-3


def test_logits_match_transformers(embedded_model, embedded_hf_model):
    torch = pytest.importorskip("torch")
    tok = embedded_model.tokenizer
    rows = [tok.encode_chat(p, add_generation_prompt=True) for p in PROMPTS]
    t = max(map(len, rows))
    tokens = np.zeros((len(rows), t), np.int32)
    mask = np.zeros((len(rows), t), bool)
    for i, r in enumerate(rows):  # left-padded, as for generation
        tokens[i, t - len(r):] = r
        mask[i, t - len(r):] = True
    ours = np.asarray(M.forward(embedded_model.weights, embedded_model.cfg, jnp.asarray(tokens), jnp.asarray(mask)))
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        ref = embedded_hf_model(input_ids=torch.tensor(tokens, dtype=torch.long),
                                attention_mask=torch.tensor(mask, dtype=torch.long),
                                position_ids=torch.tensor(pos, dtype=torch.long)).logits.numpy()
    ours, ref = ours[mask], ref[mask]
    diff = float(np.abs(ours - ref).max())
    agree = float((ours.argmax(-1) == ref.argmax(-1)).mean())
    print(f"\nreal model: {mask.sum()} positions, argmax agreement {agree:.4f}, max |logit diff| {diff:.2e}, "
          f"max |logit| {np.abs(ref).max():.1f}")
    assert agree >= 0.99
    assert diff < MAX_ABS_DIFF


def test_greedy_answer_is_coherent(embedded_model):
    from emjax.model import sampling as S
    tok = embedded_model.tokenizer
    ids = tok.prompt_ids("What is the capital of France? Answer in one word.")
    out = S.generate(embedded_model.weights, embedded_model.cfg, [ids], max_new_tokens=8, temperature=0.0,
                     stop_ids=tok.stop_ids)[0]
    assert "Paris" in tok.decode(out)
    assert out[-1] in tok.stop_ids
