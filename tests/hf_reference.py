"""Tiny random Hugging Face models (PyTorch, float32, eager attention) for parity tests."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from emjax.model.config import ModelConfig  # noqa: E402
from emjax.checkpoints.hf import weights_from_state_dict  # noqa: E402


def qwen2_config(tied: bool, **kw):
    base = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6,
                tie_word_embeddings=tied, max_position_embeddings=256)
    base.update(kw)
    return transformers.Qwen2Config(**base)


def gemma2_config(**kw):
    # Window shorter than the test sequences, query_pre_attn_scalar != head_dim, low caps so
    # both soft-caps are active with the enlarged weights below.
    base = dict(vocab_size=199, hidden_size=48, intermediate_size=80, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
                sliding_window=5, attn_logit_softcapping=3.0, final_logit_softcapping=5.0,
                rms_norm_eps=1e-6, max_position_embeddings=256)
    base.update(kw)
    return transformers.Gemma2Config(**base)


def llama3_config(tied: bool = False, **kw):
    # Llama-3 RoPE scaling with original_max_position_embeddings small enough that the head's
    # 8 frequencies fall in all three bands (kept: wavelength < 16; smoothed: 16-64; divided: > 64).
    base = dict(vocab_size=201, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                rope_scaling=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                                  high_freq_factor=4.0, original_max_position_embeddings=64),
                tie_word_embeddings=tied, max_position_embeddings=256)
    base.update(kw)
    return transformers.LlamaConfig(**base)


# transformers class of each family's tiny models
HF_CLASSES = {"qwen2": "Qwen2ForCausalLM", "gemma2": "Gemma2ForCausalLM", "llama": "LlamaForCausalLM"}


def build_hf(hf_cfg, seed: int = 0, weight_scale: float = 1.0):
    """A random float32 HF model with eager attention; biases and norms randomised (norms around 1
    where they multiply w, around 0 for Gemma's 1 + w)."""
    hf_cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    cls = getattr(transformers, HF_CLASSES[hf_cfg.model_type])
    model = cls(hf_cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.normal_(0.0, 0.3).add_(1.0 if hf_cfg.model_type != "gemma2" and "norm" in name else 0.0)
            else:
                p.mul_(weight_scale)
    return model


def to_emjax(model, dtype=np.float32):
    cfg = ModelConfig.from_hf(model.config.to_dict())
    sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)
    import jax.numpy as jnp
    return cfg, weights_from_state_dict(cfg, sd, dtype=jnp.float32, source="hf-test-model")


def padded_batch(rng: np.random.Generator, vocab: int, lengths: list[int], side: str):
    """tokens [B, T] int32 and mask [B, T] bool, padded on `side` with token 0."""
    t = max(lengths)
    tokens = np.zeros((len(lengths), t), np.int32)
    mask = np.zeros((len(lengths), t), bool)
    for i, n in enumerate(lengths):
        ids = rng.integers(1, vocab, n)
        sl = slice(t - n, t) if side == "left" else slice(0, n)
        tokens[i, sl] = ids
        mask[i, sl] = True
    return tokens, mask
