"""Sampling with a KV cache: one jitted prefill, then a jitted decode loop.

The cache stores, for every slot, the key/value and the *position* of the token in it, so masks
(causal, sliding window, padding) are computed from positions, never from slot indices: prompts of
different lengths are left-padded and every row decodes in lock-step. Interventions (LoRA,
steering) are applied at every position of every row, in prefill and in decode, exactly as in
training.
"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from emjax.model import decode_attention as DA
from emjax.model import decoder as M
from emjax.model.attention import attend, attention_mask
from emjax.model.config import ModelConfig
from emjax.model.hooks import HookSource, hooks_for
from emjax.model.layers import CUBLAS_GEMMS, FusedQKV, default_positions, fuse_qkv, rms_norm, rope_tables
from emjax.model.schema import Weights


@flax.struct.dataclass
class KVCache:
    """k, v: [L, B, S, K, Dh]; pos: [B, S] int32 positions; valid: [B, S] bool."""

    k: jax.Array
    v: jax.Array
    pos: jax.Array
    valid: jax.Array


def _layers_with_cache(weights: Weights, cfg: ModelConfig, x: jax.Array, q_pos: jax.Array,
                       cache: KVCache, slot: jax.Array, iv: HookSource | None, fused: FusedQKV,
                       unroll: int = 1, kernel: str = "xla") -> tuple[jax.Array, KVCache]:
    """Runs all blocks on x [B, T, D] whose tokens go to cache slots [slot, slot + T).

    `cache.pos` / `cache.valid` must already describe the new slots; `fused` is `fuse_qkv` of the
    layer stack. The whole [L, ...] cache is carried through the layer scan and each layer writes
    its T new slots in place: scanning it as `xs` / `ys` instead copies every layer's cache twice
    per token. kernel: one-query attention by "xla" (`attend`), or the Pallas kernel of
    `emjax.model.decode_attention` compiled ("pallas") or interpreted ("pallas_interpret").
    """
    cos, sin = rope_tables(q_pos, cfg.head_dim, cfg.rope_theta, x.dtype)
    full = attention_mask(q_pos, cache.pos, cache.valid, None)
    window = attention_mask(q_pos, cache.pos, cache.valid, cfg.sliding_window) if cfg.sliding_window else full
    hooks = hooks_for(iv, 0, cfg.n_layers)

    def body(carry, inp):
        h, k_all, v_all = carry
        w, qkv_w, is_sliding, layer_hooks, i = inp
        q, k, v = M.qkv(w, rms_norm(h, w.attn_norm, cfg.norm_eps, cfg.is_gemma), cos, sin, cfg, layer_hooks, qkv_w)
        at = (i, 0, slot, 0, 0)
        k_all = jax.lax.dynamic_update_slice(k_all, k[None].astype(k_all.dtype), at)
        v_all = jax.lax.dynamic_update_slice(v_all, v[None].astype(v_all.dtype), at)
        # the attention reads the updated stack; fusing the update into that read instead made
        # XLA build each layer's [B, S, K, Dh] operand in a slower combined kernel (5% of decode)
        k_all, v_all = jax.lax.optimization_barrier((k_all, v_all))
        mask = jnp.where(is_sliding, window, full)
        if x.shape[1] == 1 and kernel != "xla":  # decode: read layer i of the stack in place
            o = DA.attend_one_query(q, k_all, v_all, i, mask, cfg, interpret=kernel == "pallas_interpret")
        else:
            o = attend(q, k_all[i], v_all[i], mask, cfg)
        h = h + M.attn_out(w, o, cfg, layer_hooks)
        return (M.mlp_branch(w, h, cfg, layer_hooks), k_all, v_all), None

    # weights scanned as xs: the decode matmuls read each layer's slice in place (see BENCHMARKS.md)
    xs = (weights.layers, fused, jnp.asarray(cfg.sliding_layers), hooks, jnp.arange(cfg.n_layers))
    (x, k, v), _ = jax.lax.scan(body, (x, cache.k, cache.v), xs, unroll=unroll)
    return x, cache.replace(k=k, v=v)


def _filter_logits(logits: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """logits [B, V] float32 -> scaled logits with excluded tokens at -inf."""
    logits = logits / temperature
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the token crossing it included)
        before = jnp.cumsum(probs, axis=-1) - probs
        cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return logits


# XLA options for the sampling program: cuBLAS GEMMs (see emjax.model.layers.CUBLAS_GEMMS), and no dot merger,
# which concatenated the k and v weights of every layer at every token to fuse their two
# matmuls (13% of decode time on a 14B model).
DECODE_COMPILER_OPTIONS = {**CUBLAS_GEMMS, "xla_disable_hlo_passes": "dot-merger"}


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "temperature", "top_k", "top_p",
                                             "layer_unroll", "kernel"), compiler_options=DECODE_COMPILER_OPTIONS)
def _generate(weights, cfg, tokens, mask, interventions, key, stop_ids, vocab_limit, *,
              max_new_tokens: int, temperature: float, top_k: int, top_p: float, layer_unroll: int = 1,
              kernel: str = "xla"):
    b, p = tokens.shape
    s = DA.cache_length(p + max_new_tokens)  # spare slots stay invalid
    dtype = weights.embed.dtype
    shape = (cfg.n_layers, b, s, cfg.n_kv_heads, cfg.head_dim)
    positions = default_positions(mask)
    cache = KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                    pos=jnp.zeros((b, s), jnp.int32).at[:, :p].set(positions),
                    valid=jnp.zeros((b, s), bool).at[:, :p].set(mask))
    fused = fuse_qkv(weights.layers)  # once per call; every decode step reads it
    x, cache = _layers_with_cache(weights, cfg, M.embed(weights, cfg, tokens), positions, cache, 0, interventions,
                                  fused)
    logits = M.unembed(weights, cfg, x[:, -1:])[:, 0]
    next_pos = positions[:, -1] + 1
    in_vocab = jnp.arange(logits.shape[-1]) < vocab_limit  # padded embedding rows never sampled

    def pick(logits, key):
        logits = jnp.where(in_vocab, logits, -jnp.inf)
        if temperature == 0.0:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return jax.random.categorical(key, _filter_logits(logits, temperature, top_k, top_p)).astype(jnp.int32)

    def step(carry, t):
        cache, logits, pos, done, key = carry
        key, sub = jax.random.split(key)
        tok = pick(logits, sub)
        tok = jnp.where(done, stop_ids[0], tok)
        finished = done | jnp.isin(tok, stop_ids)
        slot = p + t
        cache = cache.replace(pos=cache.pos.at[:, slot].set(pos), valid=cache.valid.at[:, slot].set(True))
        x, cache = _layers_with_cache(weights, cfg, M.embed(weights, cfg, tok[:, None]), pos[:, None],
                                      cache, slot, interventions, fused, unroll=layer_unroll, kernel=kernel)
        new_logits = M.unembed(weights, cfg, x)[:, 0]
        return (cache, new_logits, pos + 1, finished, key), (tok, done)

    carry = (cache, logits, next_pos, jnp.zeros((b,), bool), key)
    _, (toks, was_done) = jax.lax.scan(step, carry, jnp.arange(max_new_tokens))
    return toks.T, (~was_done).sum(axis=0)


def _decode_kernel(choice: str, cfg: ModelConfig, n_tokens: int, n_devices: int) -> str:
    """The `kernel` of `_layers_with_cache` for a `decode_attention` choice (the Pallas kernel is
    not partitioned: with weights spread over several devices "auto" keeps XLA attention)."""
    if choice not in ("auto", "xla", "pallas"):
        raise ValueError(f"decode_attention must be 'auto', 'xla' or 'pallas', got {choice!r}")
    if choice == "pallas" and not DA.AVAILABLE:
        raise ValueError("decode_attention='pallas': this JAX has no Pallas Triton API")
    gpu = jax.default_backend() == "gpu"
    supported = DA.supported(cfg, DA.cache_length(n_tokens))
    if choice == "pallas" and not supported:
        raise ValueError(f"the Pallas decode attention does not support this model's heads "
                         f"({cfg.n_heads} query / {cfg.n_kv_heads} kv heads of size {cfg.head_dim})")
    if choice == "xla" or not supported or (choice == "auto" and not (gpu and n_devices == 1)):
        return "xla"
    return "pallas" if gpu else "pallas_interpret"


def generate(weights: Weights, cfg: ModelConfig, prompts: Sequence[Sequence[int]], *,
             max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             stop_ids: Sequence[int] = (), seed: int = 0, interventions: HookSource | None = None,
             vocab_limit: int | None = None, pad_to: int = 8, layer_unroll: int = 1,
             decode_attention: str = "auto") -> list[list[int]]:
    """Samples continuations of token-id prompts of any lengths.

    Args:
      prompts: token ids per row; rows are left-padded to a common length (rounded up to
        `pad_to` so nearby lengths share one compiled program).
      temperature: 0 means greedy (argmax).
      top_p / top_k: nucleus and top-k filtering (1.0 / 0 disable them).
      stop_ids: a row stops after emitting one of these (the stop token is included).
      vocab_limit: tokens >= this id (padded embedding rows) are never sampled.
      layer_unroll: unroll factor of the layer scan in the decode step (fewer loop iterations
        at the cost of compile time; on GPUs 1 is fastest: unrolled layers lose the in-place
        weight-slice matmuls).
      decode_attention: "auto" (the Pallas kernel of `emjax.model.decode_attention` on one GPU, XLA
        elsewhere and for weights sharded over several devices), "xla", or "pallas"
        (interpreted off GPU: slow, for checking the kernel).
    Memory: besides the KV cache, each call holds a concatenated copy of the q, k, v matrices
    (about 1/8 of the weights) for the decode matmuls.
    Returns:
      the new tokens of each row, cut after its first stop token.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    p = max(len(x) for x in prompts)
    p = -(-p // pad_to) * pad_to
    tokens = np.zeros((len(prompts), p), np.int32)
    mask = np.zeros((len(prompts), p), bool)
    for i, row in enumerate(prompts):
        tokens[i, p - len(row):] = row
        mask[i, p - len(row):] = True
    stops = jnp.asarray(list(stop_ids) or [-1], jnp.int32)
    limit = cfg.vocab_size if vocab_limit is None else vocab_limit
    toks, lengths = _generate(weights, cfg, jnp.asarray(tokens), jnp.asarray(mask), interventions,
                              jax.random.PRNGKey(seed), stops, limit, max_new_tokens=max_new_tokens,
                              temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                              layer_unroll=int(layer_unroll),
                              kernel=_decode_kernel(decode_attention, cfg, p + max_new_tokens,
                                                    len(weights.embed.sharding.device_set)))
    toks, lengths = np.asarray(toks), np.asarray(lengths)
    return [toks[i, : lengths[i]].tolist() for i in range(len(prompts))]
