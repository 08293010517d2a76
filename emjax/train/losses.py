"""Losses computed from final hidden states, chunked over the sequence to bound logits memory.

At 14B shapes the float32 logits of one B=8, T=256 batch are 1.2 GB (152k vocabulary), and the
KL needs two sets of them. The functions here run the unembedding chunk by chunk under a scan
whose body is rematerialised, so at most one chunk of logits (and its gradient) is alive.

Both losses return (sum, count) so callers can normalise across micro-batches exactly.
"""

from __future__ import annotations

from typing import Callable, Literal

import jax
import jax.numpy as jnp

from emjax.model.config import ModelConfig
from emjax.model.decoder import unembed
from emjax.model.schema import Weights

# "token_mean": KL summed over the vocabulary, averaged over non-padding tokens (nats/token).
# "upstream": additionally divided by the vocabulary size V, as upstream's
#   F.kl_div(...) * mask(expanded over V) / mask.sum() does; upstream lambdas (1e5 for LoRA, 1e6
#   for steering) only mean the same with this reduction.
KLReduction = Literal["token_mean", "upstream"]
# What a loss term of an accumulated step is a token mean over: "step" (every micro-batch's tokens:
# the full batch's exact gradient) or "micro_batch" (each micro-batch's own tokens, the A terms
# added up: what Hugging Face's Trainer computes when a compute_loss ignores num_items_in_batch).
MeanOver = Literal["step", "micro_batch"]


def _chunked(fn: Callable, chunk: int | None, *arrays: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sums fn(*chunk_arrays) -> (sum, count) over sequence chunks (axis 1) of `arrays`."""
    t = arrays[0].shape[1]
    if chunk is None or chunk >= t:
        return fn(*arrays)
    pad = -t % chunk
    n = (t + pad) // chunk

    def split(a):
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))  # padded tails carry mask 0
        return jnp.moveaxis(a.reshape(a.shape[0], n, chunk, *a.shape[2:]), 1, 0)

    def body(acc, xs):
        s, c = jax.checkpoint(fn)(*xs)
        return (acc[0] + s, acc[1] + c), None

    zero = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    (s, c), _ = jax.lax.scan(body, zero, tuple(split(a) for a in arrays))
    return s, c


def cross_entropy(weights: Weights, cfg: ModelConfig, x: jax.Array, targets: jax.Array,
                  loss_mask: jax.Array, chunk: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Summed next-token cross-entropy and the number of scored tokens.

    x: [B, T, D] final hidden states (before the final norm); targets: [B, T] int, the token to
    predict at each position; loss_mask: [B, T] bool, which positions count.
    """
    def fn(x, targets, loss_mask):
        logits = unembed(weights, cfg, x)
        logz = jax.nn.logsumexp(logits, axis=-1)
        tgt = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        m = loss_mask.astype(jnp.float32)
        return jnp.sum((logz - tgt) * m), jnp.sum(m)
    return _chunked(fn, chunk, x, targets, loss_mask)


def kl_base_to_adapted(weights: Weights, cfg: ModelConfig, x_base: jax.Array, x_adapted: jax.Array,
                       mask: jax.Array, chunk: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Summed forward KL(P_base || P_adapted) over masked tokens, and the token count.

    x_base / x_adapted: [B, T, D] final hidden states of the frozen and the adapted model (the
    base side is put under stop_gradient); mask: [B, T] bool.
    """
    def fn(xb, xa, mask):
        logp_base = jax.nn.log_softmax(unembed(weights, cfg, jax.lax.stop_gradient(xb)), axis=-1)
        logp_adapted = jax.nn.log_softmax(unembed(weights, cfg, xa), axis=-1)
        kl = jnp.sum(jnp.exp(logp_base) * (logp_base - logp_adapted), axis=-1)
        m = mask.astype(jnp.float32)
        return jnp.sum(kl * m), jnp.sum(m)
    return _chunked(fn, chunk, x_base, x_adapted, mask)


def kl_scale(cfg: ModelConfig, reduction: KLReduction) -> float:
    """Factor applied to the token-mean KL for the chosen reduction."""
    if reduction == "token_mean":
        return 1.0
    if reduction == "upstream":
        return 1.0 / cfg.vocab_size
    raise ValueError(f"unknown KL reduction {reduction!r}; choose 'token_mean' or 'upstream'")
