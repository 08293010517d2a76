"""Attention: masks from positions, exact XLA attention, and the fused cuDNN kernel for training.

Masks are computed from token positions, never slot indices, so left- and right-padded rows and
KV caches share one rule. Softmax is in float32; Gemma-2's soft-cap is applied before masking.
The one-query decode kernel is `emjax.model.decode_attention`.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from emjax.model.config import ModelConfig

# Large negative logit for masked keys: where(), not addition, so an all-masked row is uniform
# instead of NaN.
MASKED_LOGIT = -1e30

# "xla" (exact, any mask) or "cudnn" (fused flash attention; right-padded rows only); "auto"
# picks cudnn on NVIDIA GPUs where the config allows (`resolve_attention`).
AttentionImpl = Literal["xla", "cudnn"]
ATTENTION_CHOICES = ("auto", "xla", "cudnn")


def attention_mask(q_pos: jax.Array, k_pos: jax.Array, k_valid: jax.Array,
                   window: int | None) -> jax.Array:
    """[B, T, S] bool: causal by position, keys must be real, and (if window) within the window.

    q_pos: [B, T]; k_pos: [B, S]; k_valid: [B, S]. A query at position p sees keys at positions
    p - window < k <= p.
    """
    qp, kp = q_pos[:, :, None], k_pos[:, None, :]
    m = (kp <= qp) & k_valid[:, None, :]
    if window is not None:
        m = m & (kp > qp - window)
    return m


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Grouped-query attention with optional soft-cap.

    q: [B, T, H, Dh]; k, v: [B, S, K, Dh]; mask: [B, T, S] bool. Returns [B, T, H, Dh].
    """
    b, t, h, dh = q.shape
    kvh = k.shape[2]
    q = q.reshape(b, t, kvh, h // kvh, dh)
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    logits = logits * cfg.attn_scale
    if cfg.attn_softcap is not None:
        logits = cfg.attn_softcap * jnp.tanh(logits / cfg.attn_softcap)
    logits = jnp.where(mask[:, None, None, :, :], logits, MASKED_LOGIT)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, dh)


def cudnn_supported(cfg: ModelConfig) -> bool:
    """The fused kernel needs no soft-cap, no sliding window and head_dim <= 128 (Qwen2-style)."""
    return cfg.attn_softcap is None and not any(cfg.sliding_layers) and cfg.head_dim <= 128


def resolve_attention(choice: str, cfg: ModelConfig) -> AttentionImpl:
    """"auto" -> "cudnn" on NVIDIA GPUs for configs the fused kernel supports, else "xla";
    "xla" / "cudnn" are checked and returned."""
    if choice == "auto":
        return "cudnn" if cudnn_supported(cfg) and jax.default_backend() == "gpu" else "xla"
    if choice == "cudnn" and not cudnn_supported(cfg):
        raise ValueError("attention 'cudnn' needs no soft-cap, no sliding window and head_dim <= 128 "
                         f"(Qwen2-style); this {cfg.family} config does not allow it: use 'xla'")
    if choice not in ATTENTION_CHOICES:
        raise ValueError(f"unknown attention implementation {choice!r}; choose from {ATTENTION_CHOICES}")
    return choice  # type: ignore[return-value]


def cudnn_attend(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array, cfg: ModelConfig,
                 implementation: str = "cudnn") -> jax.Array:
    """Fused causal attention (cuDNN flash) for right-padded rows of `lengths` real tokens.

    q: [B, T, H, Dh]; k, v: [B, T, K, Dh]; lengths: [B] int32. Rows must hold their real tokens
    first (positions 0..n-1), as training batches do; padded query rows are not meaningful.
    implementation: "xla" runs the same masks without cuDNN (tests on CPU).
    """
    return jax.nn.dot_product_attention(q, k, v, scale=cfg.attn_scale, is_causal=True,
                                        query_seq_lengths=lengths, key_value_seq_lengths=lengths,
                                        implementation=implementation)
