"""The decoder as pure functions of a `Weights` pytree: Qwen2 and Gemma-2.

    logits = forward(weights, cfg, tokens, mask)

is the composition of three public stages, so any layer range can be run on its own:

    x = embed(weights, cfg, tokens)                               # [B, T, D]
    x = run_layers(weights, cfg, x, positions, mask, start, stop)  # layers [start, stop)
    logits = unembed(weights, cfg, x)                              # [B, T, V] float32

Numerics follow the Hugging Face implementations (the parity tests in tests/test_parity.py
hold them to 1e-4 in float32): RMSNorm in float32 (Qwen: cast back then multiply by w;
Gemma-2: multiply by (1 + w) in float32 then cast), RoPE tables in float32 cast to the activation
dtype, softmax in float32, Gemma-2's attention soft-cap applied before masking and its sqrt(D)
embedding scale rounded to the activation dtype first. Attention logits and final logits are
accumulated in float32 even for bf16 weights.

Base weights are constants under differentiation: the projections go through a custom VJP
(`_frozen_matmul`) that passes no gradient to them, because emjax only ever trains interventions
and the rule keeps the backward pass from copying the weights. Differentiate interventions, not
`Weights`.

Padding: `mask[b, t]` is True for real tokens. Positions default to the count of real tokens
before t, so a left-padded row computes exactly what the unpadded row does. Logits at padding
positions are finite but meaningless.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from emjax.config import ModelConfig
from emjax.interventions import DenseLayerIntervention, Interventions, densify, enter_layer
from emjax.params import LayerWeights, Weights

# XLA options for programs made of large matmuls against frozen weights: on H100/H200, cuBLAS
# ran these shapes faster than XLA's Triton GEMMs (skinny decode matmuls at about twice the
# bandwidth; the 16-norm sweep 4% faster; BENCHMARKS.md). Backends other than GPU ignore them.
CUBLAS_GEMMS = {"xla_gpu_enable_triton_gemm": False}

# Large negative logit for masked keys: where(), not addition, so an all-masked row is uniform
# instead of NaN.
MASKED_LOGIT = -1e30

RematPolicy = Optional[str]  # None (no remat), "full" (recompute the block), "dots" (save matmuls)


# ---------------------------------------------------------------------------------------------
# Building blocks


def rms_norm(x: jax.Array, w: jax.Array, eps: float, plus_one: bool) -> jax.Array:
    """RMSNorm over the last axis. x: [..., D], w: [D]."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    if plus_one:  # Gemma: scale in float32, cast at the end
        return (y * (1.0 + w.astype(jnp.float32))).astype(x.dtype)
    return w * y.astype(x.dtype)  # Qwen/Llama: cast back, then scale


def default_positions(mask: jax.Array) -> jax.Array:
    """[B, T] bool -> [B, T] int32: index of each token among the row's real tokens."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def rope_tables(positions: jax.Array, head_dim: int, theta: float, dtype) -> tuple[jax.Array, jax.Array]:
    """cos, sin: [B, T, Dh] in `dtype`, computed in float32 (rotate-half layout)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, Dh/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [B, T, N, Dh]; cos/sin: [B, T, Dh]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


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


@jax.custom_vjp
def _frozen_matmul(x: jax.Array, stack: jax.Array, i: jax.Array) -> jax.Array:
    """x [..., in] @ stack[i] [in, out] with the weight stack treated as a constant.

    Differentiating the plain `x @ stack[i]` inside the layer scan makes JAX save every
    layer's weight slice as a residual for the backward pass: a stacked copy of the frozen
    weights of the whole layer range (15 GB for half of a 14B model). Here the residual is the
    resident stack itself and the index, and the backward re-slices it. The weights get no
    gradient: emjax never trains base weights.
    """
    return x @ stack[i]


def _frozen_matmul_fwd(x, stack, i):
    return x @ stack[i], (stack, i)


def _frozen_matmul_bwd(res, g):
    stack, i = res
    return jnp.einsum("...o,io->...i", g, stack[i]), None, None


_frozen_matmul.defvjp(_frozen_matmul_fwd, _frozen_matmul_bwd)


@dataclasses.dataclass(frozen=True)
class FrozenMatrix:
    """Layer `i` of a stacked [L, in, out] weight, multiplied without copying the slice."""

    stack: jax.Array
    i: jax.Array

    def __rmatmul__(self, x: jax.Array) -> jax.Array:
        return _frozen_matmul(x, self.stack, self.i)


_MATRICES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def layer_view(layers: LayerWeights, i: jax.Array) -> LayerWeights:
    """Layer i of the stack: matrices as FrozenMatrix views, small vectors sliced."""
    fields = {f.name: getattr(layers, f.name) for f in dataclasses.fields(layers)}
    return LayerWeights(**{k: (None if v is None else FrozenMatrix(v, i) if k in _MATRICES else v[i])
                           for k, v in fields.items()})


def _proj(x: jax.Array, w: jax.Array | FrozenMatrix, name: str, iv: DenseLayerIntervention | None,
          bias: jax.Array | None = None) -> jax.Array:
    """x @ w (+ bias) (+ unmerged LoRA delta (x @ A) @ B when `name` is targeted)."""
    y = x @ w
    if bias is not None:
        # Kept out of the matmul epilogue: a fused bias is a second operand sliced from a layer
        # stack, and XLA then copies the weight slice out of the stack before the matmul (every
        # layer, every decoded token: 3 copies per layer, 12% of decode time on a 14B model).
        y = jax.lax.optimization_barrier(y) + bias
    return _add_lora(y, x, name, iv)


def _add_lora(y: jax.Array, x: jax.Array, name: str, iv: DenseLayerIntervention | None) -> jax.Array:
    """y + the unmerged LoRA delta (x @ A) @ B of module `name`, if targeted."""
    if iv is not None and name in iv.lora_a:
        a, b = iv.lora_a[name].astype(x.dtype), iv.lora_b[name].astype(x.dtype)
        y = y + (x @ a) @ b
    return y


class FusedQKV(NamedTuple):
    """The q, k and v projections as one matrix: w [..., D, (H + 2K) * Dh], bias [..., (H + 2K) * Dh]
    or None. For decode, where one matmul reads them at a better bandwidth than three skinny ones."""

    w: jax.Array
    bias: Optional[jax.Array]


def fuse_qkv(layers: LayerWeights) -> FusedQKV:
    """Concatenates the stacked q, k, v matrices (and biases): a copy of about 1/8 of the weights."""
    w = jnp.concatenate([layers.q_proj, layers.k_proj, layers.v_proj], axis=-1)
    bias = None if layers.q_bias is None else jnp.concatenate([layers.q_bias, layers.k_bias, layers.v_bias], -1)
    return FusedQKV(w, bias)


def mlp(w: LayerWeights, x: jax.Array, cfg: ModelConfig, iv: DenseLayerIntervention | None) -> jax.Array:
    """Gated MLP, [B, T, D] -> [B, T, D] (the down_proj output, before any post-norm)."""
    gate = _proj(x, w.gate_proj, "gate_proj", iv)
    act = jax.nn.silu(gate) if cfg.activation == "silu" else jax.nn.gelu(gate, approximate=True)
    return _proj(act * _proj(x, w.up_proj, "up_proj", iv), w.down_proj, "down_proj", iv)


def qkv(w: LayerWeights, x: jax.Array, cos: jax.Array, sin: jax.Array, cfg: ModelConfig,
        iv: DenseLayerIntervention | None, fused: FusedQKV | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Projected, rotated q [B, T, H, Dh] and k, v [B, T, K, Dh] from normed input x.

    fused: this layer's `FusedQKV`, used instead of w's three matrices when given.
    """
    b, t, _ = x.shape
    if fused is None:
        q = _proj(x, w.q_proj, "q_proj", iv, w.q_bias)
        k = _proj(x, w.k_proj, "k_proj", iv, w.k_bias)
        v = _proj(x, w.v_proj, "v_proj", iv, w.v_bias)
    else:
        nq, nkv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        q, k, v = jnp.split(_proj(x, fused.w, "qkv", None, fused.bias), [nq, nq + nkv], axis=-1)
        q, k, v = (_add_lora(y, x, name, iv) for y, name in ((q, "q_proj"), (k, "k_proj"), (v, "v_proj")))
    q = q.reshape(b, t, cfg.n_heads, cfg.head_dim)
    k = k.reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
    v = v.reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def attn_out(w: LayerWeights, o: jax.Array, cfg: ModelConfig, iv: DenseLayerIntervention | None) -> jax.Array:
    """[B, T, H, Dh] attention output -> [B, T, D] branch (post-norm applied for Gemma-2)."""
    y = _proj(o.reshape(o.shape[0], o.shape[1], -1), w.o_proj, "o_proj", iv)
    if cfg.is_gemma:
        y = rms_norm(y, w.post_attn_norm, cfg.norm_eps, True)
    return y


def mlp_branch(w: LayerWeights, h: jax.Array, cfg: ModelConfig, iv: DenseLayerIntervention | None) -> jax.Array:
    """Residual h [B, T, D] -> h after the MLP sub-block, with the steering hooks applied."""
    y = mlp(w, rms_norm(h, w.mlp_norm, cfg.norm_eps, cfg.is_gemma), cfg, iv)
    if iv is not None and iv.steer_mlp is not None:
        y = y + iv.steer_mlp.astype(y.dtype)
    if cfg.is_gemma:
        y = rms_norm(y, w.post_mlp_norm, cfg.norm_eps, True)
    h = h + y
    if iv is not None and iv.steer_block is not None:
        h = h + iv.steer_block.astype(h.dtype)
    return h


def block(w: LayerWeights, x: jax.Array, cos: jax.Array, sin: jax.Array, attn_fn,
          cfg: ModelConfig, iv: DenseLayerIntervention | None) -> jax.Array:
    """One decoder block on the full sequence. x: [B, T, D]; attn_fn(q, k, v) -> [B, T, H, Dh]."""
    q, k, v = qkv(w, rms_norm(x, w.attn_norm, cfg.norm_eps, cfg.is_gemma), cos, sin, cfg, iv)
    h = x + attn_out(w, attn_fn(q, k, v), cfg, iv)
    return mlp_branch(w, h, cfg, iv)


AttentionImpl = str  # "xla" (exact, any mask) or "cudnn" (fused; right-padded rows only)


def _check_cudnn(cfg: ModelConfig) -> None:
    if cfg.attn_softcap is not None or any(cfg.sliding_layers) or cfg.head_dim > 128:
        raise ValueError("attention 'cudnn' needs no soft-cap, no sliding window and head_dim <= 128 "
                         f"(Qwen2-style); this {cfg.family} config has none of that: use 'xla'")


def cudnn_attend(q: jax.Array, k: jax.Array, v: jax.Array, lengths: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Fused causal attention (cuDNN flash) for right-padded rows of `lengths` real tokens.

    q: [B, T, H, Dh]; k, v: [B, T, K, Dh]; lengths: [B] int32. Rows must hold their real tokens
    first (positions 0..n-1), as training batches do; padded query rows are not meaningful.
    """
    return jax.nn.dot_product_attention(q, k, v, scale=cfg.attn_scale, is_causal=True,
                                        query_seq_lengths=lengths, key_value_seq_lengths=lengths,
                                        implementation="cudnn")


# ---------------------------------------------------------------------------------------------
# Public stages


def embed(weights: Weights, cfg: ModelConfig, tokens: jax.Array) -> jax.Array:
    """tokens [B, T] int -> residual stream [B, T, D] in the weights' dtype."""
    x = jnp.take(weights.embed, tokens, axis=0)
    if cfg.is_gemma:  # the normaliser is rounded to the activation dtype first, as in HF
        x = x * jnp.asarray(cfg.d_model ** 0.5, dtype=x.dtype)
    return x


def unembed(weights: Weights, cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """Final norm and projection to the vocabulary: [B, T, D] -> [B, T, V] float32 logits."""
    x = rms_norm(x, weights.final_norm, cfg.norm_eps, cfg.is_gemma)
    if weights.lm_head is None:
        logits = jnp.einsum("btd,vd->btv", x, weights.embed, preferred_element_type=jnp.float32)
    else:
        logits = jnp.einsum("btd,dv->btv", x, weights.lm_head, preferred_element_type=jnp.float32)
    if cfg.final_softcap is not None:
        logits = cfg.final_softcap * jnp.tanh(logits / cfg.final_softcap)
    return logits


def _remat(fn, policy: RematPolicy):
    if policy is None:
        return fn
    if policy == "full":
        return jax.checkpoint(fn)
    if policy == "dots":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    raise ValueError(f"unknown remat policy {policy!r}; choose None, 'full' or 'dots'")


def run_layers(weights: Weights, cfg: ModelConfig, x: jax.Array, positions: jax.Array,
               mask: jax.Array, start: int = 0, stop: int | None = None,
               interventions: Interventions | None = None, *, collect: bool = False,
               remat: RematPolicy = None, attention: AttentionImpl = "xla"
               ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Runs blocks [start, stop) on the residual stream under `jax.lax.scan`.

    Args:
      x: [B, T, D] residual stream entering layer `start`.
      positions: [B, T] int token positions (see `default_positions`).
      mask: [B, T] bool, True for real tokens.
      start, stop: static layer range; `stop=None` means the last layer.
      interventions: LoRA / steering applied inside the range (parts outside it are ignored).
      collect: also return every block's output.
      remat: rematerialisation policy of the block body (None, "full", "dots").
      attention: "xla" (exact for any padding) or "cudnn" (fused flash attention on NVIDIA
        GPUs; Qwen2-style configs and right-padded rows only, as in training batches).

    Returns:
      x [B, T, D] after layer stop-1, and with collect=True also hidden [stop-start, B, T, D].
    """
    stop = cfg.n_layers if stop is None else stop
    if not 0 <= start <= stop <= cfg.n_layers:
        raise ValueError(f"layer range [{start}, {stop}) outside [0, {cfg.n_layers}]")
    if start == stop:
        return (x, jnp.zeros((0,) + x.shape, x.dtype)) if collect else x
    cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta, x.dtype)
    full_mask = attention_mask(positions, positions, mask, None)
    window_mask = (attention_mask(positions, positions, mask, cfg.sliding_window)
                   if cfg.sliding_window else full_mask)
    sliding = jnp.asarray(cfg.sliding_layers[start:stop])
    dense = densify(interventions, start, stop)
    if attention == "cudnn":
        _check_cudnn(cfg)
        lengths = jnp.sum(mask, axis=-1).astype(jnp.int32)
    elif attention != "xla":
        raise ValueError(f"unknown attention implementation {attention!r}; choose 'xla' or 'cudnn'")

    def body(h, inp):
        i, is_sliding, iv = inp
        # Index the full stack in the loop: slicing [start:stop] up front copies the weights of
        # the whole range (measured +20 ms per step for half of a 14B model on an H100). The
        # decode loop (sampling.py) instead scans the stack as xs: it always covers every layer.
        w = layer_view(weights.layers, i)
        if attention == "cudnn":
            attn_fn = lambda q, k, v: cudnn_attend(q, k, v, lengths, cfg)
        else:
            m = jnp.where(is_sliding, window_mask, full_mask)
            attn_fn = lambda q, k, v: attend(q, k, v, m, cfg)
        h = block(w, h, cos, sin, attn_fn, cfg, iv)
        return h, (h if collect else None)

    x, hidden = jax.lax.scan(_remat(body, remat), x, (jnp.arange(start, stop), sliding, dense))
    return (x, hidden) if collect else x


def run_suffix(weights: Weights, cfg: ModelConfig, x_frozen: jax.Array, positions: jax.Array, mask: jax.Array,
               start: int, interventions: Interventions | None, **kwargs) -> jax.Array:
    """Blocks [start, L) under `interventions`, from the *frozen* model's residual entering `start`
    (prefix sharing: the steering vector of a block the shared prefix took in is added first, see
    `emjax.interventions.enter_layer`). kwargs as in `run_layers`. Returns [B, T, D]."""
    x = enter_layer(interventions, cfg, x_frozen, start)
    return run_layers(weights, cfg, x, positions, mask, start, None, interventions, **kwargs)


@functools.partial(jax.jit, static_argnames=("cfg", "collect", "remat"))
def forward(weights: Weights, cfg: ModelConfig, tokens: jax.Array, mask: jax.Array | None = None,
            positions: jax.Array | None = None, interventions: Interventions | None = None,
            *, collect: bool = False, remat: RematPolicy = None):
    """Full forward pass: tokens [B, T] -> logits [B, T, V] float32.

    With collect=True returns (logits, hidden) where hidden is [L + 1, B, T, D]: the embedding
    output followed by every block's output (the final norm is not applied), matching
    Hugging Face `output_hidden_states` except for its last entry, which HF returns after the
    final norm.
    """
    if mask is None:
        mask = jnp.ones(tokens.shape, bool)
    if positions is None:
        positions = default_positions(mask)
    x0 = embed(weights, cfg, tokens)
    out = run_layers(weights, cfg, x0, positions, mask, 0, cfg.n_layers, interventions,
                     collect=collect, remat=remat)
    if collect:
        x, hidden = out
        return unembed(weights, cfg, x), jnp.concatenate([x0[None], hidden], axis=0)
    return unembed(weights, cfg, out)
