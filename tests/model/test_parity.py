"""Parity with the Hugging Face PyTorch implementations on tiny random float32 models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_reference import build_hf, gemma2_config, llama3_config, padded_batch, qwen2_config, to_emjax, torch
from emjax import model as M
from emjax.model.config import ModelConfig
from emjax.model.decoder import qkv
from emjax.model.layers import rope_tables
from emjax.model import sampling as S

TOL = 1e-4
# Llama is held to 1e-5 (issue #23's bar for a new family); the older cases keep theirs.
TOLS = {"llama3_untied": 1e-5, "llama3_tied": 1e-5}

CASES = {
    "qwen2_tied": lambda: build_hf(qwen2_config(tied=True), seed=1),
    "qwen2_untied": lambda: build_hf(qwen2_config(tied=False), seed=2),
    # weight_scale makes logits far larger than the (lowered) caps, so both soft-caps bite.
    "gemma2": lambda: build_hf(gemma2_config(), seed=3, weight_scale=8.0),
    "llama3_untied": lambda: build_hf(llama3_config(tied=False), seed=4),
    "llama3_tied": lambda: build_hf(llama3_config(tied=True), seed=5),
    # use_sliding_window: layers 1 and 2 attend to the last 4 keys (test_qwen2_sliding_window_layers)
    "qwen2_sliding": lambda: build_hf(qwen2_config(tied=False, use_sliding_window=True, sliding_window=4,
                                                   max_window_layers=1), seed=8),
}


@pytest.fixture(scope="module", params=list(CASES))
def pair(request):
    hf = CASES[request.param]()
    cfg, w = to_emjax(hf)
    return request.param, hf, cfg, w


def hf_forward(hf, tokens, mask):
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(tokens, dtype=torch.long),
                 attention_mask=torch.tensor(mask, dtype=torch.long),
                 position_ids=torch.tensor(pos, dtype=torch.long), output_hidden_states=True)
    return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


def test_logits_and_hidden_states_unpadded(pair):
    name, hf, cfg, w = pair
    TOL = TOLS.get(name, globals()["TOL"])
    rng = np.random.default_rng(10)
    tokens, mask = padded_batch(rng, cfg.vocab_size, [13, 13], "right")
    ref_logits, ref_hidden = hf_forward(hf, tokens, mask)
    logits, hidden = M.forward(w, cfg, jnp.asarray(tokens), jnp.asarray(mask), collect=True)
    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=TOL, rtol=0)
    assert hidden.shape[0] == cfg.n_layers + 1
    for i in range(cfg.n_layers):  # HF's last hidden state is after the final norm
        np.testing.assert_allclose(np.asarray(hidden[i]), ref_hidden[i], atol=TOL, rtol=0, err_msg=f"layer {i}")
    final = M.rms_norm(hidden[-1], w.final_norm, cfg.norm_eps, cfg.norm_plus_one)
    np.testing.assert_allclose(np.asarray(final), ref_hidden[-1], atol=TOL, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batches(pair, side):
    name, hf, cfg, w = pair
    TOL = TOLS.get(name, globals()["TOL"])
    rng = np.random.default_rng(11 if side == "left" else 12)
    lengths = [14, 9, 3, 11]
    tokens, mask = padded_batch(rng, cfg.vocab_size, lengths, side)
    ref_logits, _ = hf_forward(hf, tokens, mask)
    logits = np.asarray(M.forward(w, cfg, jnp.asarray(tokens), jnp.asarray(mask)))
    assert np.isfinite(logits).all()
    np.testing.assert_allclose(logits[mask], ref_logits[mask], atol=TOL, rtol=0)
    # A padded row computes exactly what the same row alone computes.
    for i, n in enumerate(lengths):
        alone = np.asarray(M.forward(w, cfg, jnp.asarray(tokens[i][mask[i]][None])))[0]
        np.testing.assert_allclose(logits[i][mask[i]], alone, atol=TOL, rtol=0)


def test_softcaps_are_active():
    hf = CASES["gemma2"]()
    cfg, w = to_emjax(hf)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 12)))
    logits = M.forward(w, cfg, tokens)
    # tanh(1) = 0.76: capped logits this large mean the raw ones exceeded the cap.
    assert float(jnp.max(jnp.abs(logits))) > 0.76 * cfg.final_softcap
    x = M.rms_norm(M.embed(w, cfg, tokens), w.layers.attn_norm[0], cfg.norm_eps, True)
    lw = jax.tree.map(lambda a: a[0], w.layers)
    pos = M.default_positions(jnp.ones(tokens.shape, bool))
    cos, sin = rope_tables(pos, cfg.head_dim, cfg.rope_theta, x.dtype)
    q, k, _ = qkv(lw, x, cos, sin, cfg, None)
    raw = jnp.einsum("bthd,bshd->bhts", q[:, :, ::2], k) * cfg.attn_scale
    assert float(jnp.max(jnp.abs(raw))) > cfg.attn_softcap


def test_qwen2_sliding_window_layers():
    """Qwen2 with use_sliding_window: the layers from max_window_layers on attend to the last
    `sliding_window` keys only, as transformers' Qwen2 does (the window is far shorter than the rows)."""
    hf = CASES["qwen2_sliding"]()
    cfg, w = to_emjax(hf)
    assert cfg.sliding_window == 4 and cfg.sliding_layers == (False, True, True)
    tokens, mask = padded_batch(np.random.default_rng(18), cfg.vocab_size, [16, 11], "left")
    ref, _ = hf_forward(hf, tokens, mask)
    ours = np.asarray(M.forward(w, cfg, jnp.asarray(tokens), jnp.asarray(mask)))
    full = np.asarray(M.forward(w, cfg.replace(sliding_window=None, sliding_layers=()), jnp.asarray(tokens),
                                jnp.asarray(mask)))
    m = mask.astype(bool)
    np.testing.assert_allclose(ours[m], ref[m], atol=TOL, rtol=0)
    assert np.abs(full[m] - ref[m]).max() > 10 * TOL
    # without use_sliding_window the window is never applied, whatever max_window_layers says
    plain = ModelConfig.from_hf(qwen2_config(tied=False, max_window_layers=0).to_dict())
    assert plain.sliding_window is None and not any(plain.sliding_layers)


def test_gemma2_exact_gelu():
    """Gemma-2 runs hidden_activation "gelu" as the exact erf GELU (transformers' Gemma2MLP), not
    the tanh approximation of its default (and of Gemma-1's "gelu")."""
    hf = build_hf(gemma2_config(hidden_activation="gelu"), seed=3, weight_scale=8.0)
    cfg, w = to_emjax(hf)
    assert cfg.activation == "gelu"
    tokens, mask = padded_batch(np.random.default_rng(17), cfg.vocab_size, [13, 9], "left")
    ref, _ = hf_forward(hf, tokens, mask)
    ours = np.asarray(M.forward(w, cfg, jnp.asarray(tokens), jnp.asarray(mask)))
    tanh = np.asarray(M.forward(w, cfg.replace(activation="gelu_tanh"), jnp.asarray(tokens), jnp.asarray(mask)))
    m = mask.astype(bool)
    np.testing.assert_allclose(ours[m], ref[m], atol=TOL, rtol=0)
    assert np.abs(tanh[m] - ref[m]).max() > 10 * TOL


def test_llama3_rope_scaling_is_active():
    """Without its llama3 scaling the tiny Llama's logits move hundreds of tolerances away, so the parity
    above tests the scaled frequencies (all three bands: see hf_reference.llama3_config)."""
    hf = CASES["llama3_untied"]()
    cfg, w = to_emjax(hf)
    assert cfg.rope_scaling is not None and cfg.rope_scaling.factor == 8.0
    tokens, mask = padded_batch(np.random.default_rng(16), cfg.vocab_size, [40], "right")
    ref, _ = hf_forward(hf, tokens, mask)
    ours = np.asarray(M.forward(w, cfg, jnp.asarray(tokens)))
    plain = np.asarray(M.forward(w, cfg.replace(rope_scaling=None), jnp.asarray(tokens)))
    np.testing.assert_allclose(ours, ref, atol=TOLS["llama3_untied"], rtol=0)
    assert np.abs(plain - ref).max() > 100 * TOLS["llama3_untied"]  # measured 3.7e-3


def test_layer_ranges_compose(pair):
    name, hf, cfg, w = pair
    rng = np.random.default_rng(13)
    tokens, mask = padded_batch(rng, cfg.vocab_size, [10, 7, 12], "left")
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    pos = M.default_positions(mask)
    full = M.forward(w, cfg, tokens, mask)
    x0 = M.embed(w, cfg, tokens)
    for k in range(cfg.n_layers + 1):
        x = M.run_layers(w, cfg, x0, pos, mask, 0, k)
        x = M.run_layers(w, cfg, x, pos, mask, k, cfg.n_layers)
        np.testing.assert_allclose(np.asarray(M.unembed(w, cfg, x)), np.asarray(full), atol=1e-5, rtol=0)
    # three pieces too
    x = M.run_layers(w, cfg, x0, pos, mask, 0, 1)
    x = M.run_layers(w, cfg, x, pos, mask, 1, cfg.n_layers - 1)
    x = M.run_layers(w, cfg, x, pos, mask, cfg.n_layers - 1)
    np.testing.assert_allclose(np.asarray(M.unembed(w, cfg, x)), np.asarray(full), atol=1e-5, rtol=0)


def test_greedy_generation_matches_transformers(pair):
    name, hf, cfg, w = pair
    prompt = np.random.default_rng(14).integers(1, cfg.vocab_size, 6).tolist()
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=20, min_new_tokens=20, do_sample=False,
                          pad_token_id=0, eos_token_id=None)[0, len(prompt):].tolist()
    assert S.generate(w, cfg, [prompt], max_new_tokens=20, temperature=0.0)[0] == ref


def test_bf16_forward_close_to_fp32(pair):
    name, hf, cfg, w = pair
    tokens = jnp.asarray(np.random.default_rng(15).integers(0, cfg.vocab_size, (2, 9)))
    ref = M.forward(w, cfg, tokens)
    w16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), w)
    out = M.forward(w16, cfg, tokens)
    assert out.dtype == jnp.float32
    rel = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
    assert rel < 5e-2, rel


def test_attention_implementation_is_checked(pair):
    name, hf, cfg, w = pair
    x = jnp.zeros((1, 4, cfg.d_model))
    pos = jnp.arange(4)[None]
    mask = jnp.ones((1, 4), bool)
    with pytest.raises(ValueError, match="unknown attention"):
        M.run_layers(w, cfg, x, pos, mask, attention="flash")
    if cfg.attn_softcap is not None:  # soft-caps and sliding windows are not in the fused kernel
        with pytest.raises(ValueError, match="use 'xla'"):
            M.run_layers(w, cfg, x, pos, mask, attention="cudnn")
