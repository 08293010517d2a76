"""The decoder as pure functions of a `Weights` pytree: one block described by the config's features
(Llama, Qwen2 and Gemma-2 are feature sets of it; see `emjax.model.config`).

    logits = forward(weights, cfg, tokens, mask)

is the composition of three public stages, so any layer range can be run on its own:

    x = embed(weights, cfg, tokens)                               # [B, T, D]
    x = run_layers(weights, cfg, x, positions, mask, start, stop)  # layers [start, stop)
    logits = unembed(weights, cfg, x)                              # [B, T, V] float32

Numerics follow the Hugging Face implementations (the parity tests hold them to 1e-4 in
float32; see emjax.model.layers and emjax.model.attention). Attention logits and final logits
are accumulated in float32 even for bf16 weights; the sqrt(D) embedding scale (Gemma) is rounded
to the activation dtype first.

Interventions enter every block through one hook point (`emjax.model.hooks`): the block calls
`add_lora` inside each projection, `add_steering` at the sites "mlp_out" and "block_out", and
`ablate` on its output.

Base weights are constants under differentiation: the projections and the unembedding go through
custom VJPs (`emjax.model.layers.FrozenMatrix`, `frozen_unembed`) that pass no gradient to them, because emjax only ever
trains interventions. Differentiate interventions, not `Weights`.

Padding: `mask[b, t]` is True for real tokens. Positions default to the count of real tokens
before t, so a left-padded row computes exactly what the unpadded row does. Logits at padding
positions are finite but meaningless.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from emjax.model.attention import AttentionImpl, attend, attention_mask, cudnn_attend, resolve_attention
from emjax.model.config import ModelConfig
from emjax.model.hooks import (HookSource, LayerHooks, ablate, add_lora, add_lora_shared, add_steering, hooks_for,
                               residual_sites)
from emjax.model.layers import (FrozenMatrix, FusedQKV, apply_rope, default_positions, frozen_unembed, layer_view,
                                matmul_bias, rms_norm, rope_tables)
from emjax.model.schema import LayerWeights, Weights
from emjax.model.sharding import constrain_rows

RematPolicy = Optional[str]  # None (no remat), "full" (recompute the block), "dots" (save matmuls)


# ---------------------------------------------------------------------------------------------
# One block


def _proj(x: jax.Array, w: jax.Array | FrozenMatrix, name: str, hooks: LayerHooks | None,
          bias: jax.Array | None = None) -> jax.Array:
    """x @ w (+ bias), with the LoRA hook of projection `name`."""
    return add_lora(hooks, name, x, matmul_bias(x, w, bias))


# Recomputed in the backward pass instead of kept (`lean` blocks, the default of training without
# remat): JAX's rules for a block keep each norm's float32 input and, for the gated MLP, the gate,
# the up projection, the activation's intermediates (three for SiLU, five for tanh-GELU) and, with
# a LoRA on down_proj, its input: 5-7 arrays F wide per token, most of what a LoRA r32 block
# keeps (`emjax.train.memory` counts them). All of them are
# elementwise functions of the norms' inputs and of gate and up, so the norms and the MLP from gate
# and up to the down projection run under `jax.checkpoint` with nothing saveable: the backward
# keeps their inputs and recomputes the rest (the down projection's matmul is not recomputed: its
# output is not needed to differentiate it). No CSE barrier: inside the layer scan the recomputation
# runs in the backward loop, where the forward's values do not exist to be reused.
_recompute = functools.partial(jax.checkpoint, policy=jax.checkpoint_policies.nothing_saveable, prevent_cse=False)


def _norm(x: jax.Array, w: jax.Array, cfg: ModelConfig, lean: bool) -> jax.Array:
    norm = lambda x, w: rms_norm(x, w, cfg.norm_eps, cfg.norm_plus_one)
    return (_recompute(norm) if lean else norm)(x, w)


def mlp(w: LayerWeights, x: jax.Array, cfg: ModelConfig, hooks: LayerHooks | None, lean: bool = False) -> jax.Array:
    """Gated MLP, [B, T, D] -> [B, T, D] (the down_proj output, before any post-norm)."""
    gate, up = add_lora_shared(hooks, ("gate_proj", "up_proj"), x, (x @ w.gate_proj, x @ w.up_proj))

    def down(gate, up):
        act = (jax.nn.silu(gate) if cfg.activation == "silu"
               else jax.nn.gelu(gate, approximate=cfg.activation == "gelu_tanh"))
        return _proj(act * up, w.down_proj, "down_proj", hooks)
    return (_recompute(down) if lean else down)(gate, up)


def qkv(w: LayerWeights, x: jax.Array, cos: jax.Array, sin: jax.Array, cfg: ModelConfig,
        hooks: LayerHooks | None, fused: FusedQKV | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Projected, rotated q [B, T, H, Dh] and k, v [B, T, K, Dh] from normed input x.

    fused: this layer's `FusedQKV`, used instead of w's three matrices when given.
    """
    b, t, _ = x.shape
    if fused is None:
        q, k, v = (matmul_bias(x, w.q_proj, w.q_bias), matmul_bias(x, w.k_proj, w.k_bias),
                   matmul_bias(x, w.v_proj, w.v_bias))
    else:
        nq, nkv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        q, k, v = jnp.split(matmul_bias(x, fused.w, fused.bias), [nq, nq + nkv], axis=-1)
    q, k, v = add_lora_shared(hooks, ("q_proj", "k_proj", "v_proj"), x, (q, k, v))
    q = q.reshape(b, t, cfg.n_heads, cfg.head_dim)
    k = k.reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
    v = v.reshape(b, t, cfg.n_kv_heads, cfg.head_dim)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def attn_out(w: LayerWeights, o: jax.Array, cfg: ModelConfig, hooks: LayerHooks | None,
             lean: bool = False) -> jax.Array:
    """[B, T, H, Dh] attention output -> [B, T, D] branch (with its post-norm if the config has one)."""
    y = _proj(o.reshape(o.shape[0], o.shape[1], -1), w.o_proj, "o_proj", hooks, w.o_bias)
    if cfg.post_attn_norm:
        y = _norm(y, w.post_attn_norm, cfg, lean)
    return y


def mlp_branch(w: LayerWeights, h: jax.Array, cfg: ModelConfig, hooks: LayerHooks | None,
               lean: bool = False) -> jax.Array:
    """Residual h [B, T, D] -> h after the MLP sub-block, with the steering sites applied."""
    y = mlp(w, _norm(h, w.mlp_norm, cfg, lean), cfg, hooks, lean)
    y = add_steering(hooks, "mlp_out", y)
    if cfg.post_mlp_norm:
        y = _norm(y, w.post_mlp_norm, cfg, lean)
    return ablate(hooks, add_steering(hooks, "block_out", h + y))


def block(w: LayerWeights, x: jax.Array, cos: jax.Array, sin: jax.Array, attn_fn,
          cfg: ModelConfig, hooks: LayerHooks | None, lean: bool = False) -> jax.Array:
    """One decoder block on the full sequence. x: [B, T, D]; attn_fn(q, k, v) -> [B, T, H, Dh].

    lean: recompute the norms and the MLP's elementwise part in the backward pass instead of
    keeping their intermediates (see `_recompute`); the same values, less memory to differentiate.
    """
    q, k, v = qkv(w, _norm(x, w.attn_norm, cfg, lean), cos, sin, cfg, hooks)
    h = x + attn_out(w, attn_fn(q, k, v), cfg, hooks, lean)
    return mlp_branch(w, h, cfg, hooks, lean)


# ---------------------------------------------------------------------------------------------
# Public stages


def embed(weights: Weights, cfg: ModelConfig, tokens: jax.Array) -> jax.Array:
    """tokens [B, T] int -> residual stream [B, T, D] in the weights' dtype."""
    x = jnp.take(weights.embed, tokens, axis=0)
    if cfg.embed_scale:  # the normaliser is rounded to the activation dtype first, as in HF
        x = x * jnp.asarray(cfg.d_model ** 0.5, dtype=x.dtype)
    return x


def unembed(weights: Weights, cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """Final norm and projection to the vocabulary: [B, T, D] -> [B, T, V] float32 logits."""
    x = rms_norm(x, weights.final_norm, cfg.norm_eps, cfg.norm_plus_one)
    if weights.lm_head is None:
        logits = frozen_unembed(x, weights.embed, "btd,vd->btv")
    else:
        logits = frozen_unembed(x, weights.lm_head, "btd,dv->btv")
    if cfg.final_softcap is not None:
        logits = cfg.final_softcap * jnp.tanh(logits / cfg.final_softcap)
    return logits


# remat policy -> jax.checkpoint's arguments: "full" recomputes the block, "dots" saves its matmuls
_REMAT_ARGS = {"full": {}, "dots": {"policy": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}}
REMAT_POLICIES: tuple[RematPolicy, ...] = (None, *_REMAT_ARGS)  # what train.remat may be (config checks)
LAYER_LOOPS = ("auto", "scan", "unrolled")  # what train.layer_loop may be (see `run_layers`' unroll)


def _remat(fn, policy: RematPolicy):
    if policy is None:
        return fn
    if policy not in _REMAT_ARGS:
        raise ValueError(f"unknown remat policy {policy!r}; choose from {REMAT_POLICIES}")
    return jax.checkpoint(fn, **_REMAT_ARGS[policy])


def run_layers(weights: Weights, cfg: ModelConfig, x: jax.Array, positions: jax.Array,
               mask: jax.Array, start: int = 0, stop: int | None = None,
               interventions: HookSource | None = None, *, collect: bool = False,
               remat: RematPolicy = None, attention: AttentionImpl = "xla", unroll: bool = False
               ) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Runs blocks [start, stop) on the residual stream under `jax.lax.scan`.

    Args:
      x: [B, T, D] residual stream entering layer `start`.
      positions: [B, T] int token positions (see `default_positions`).
      mask: [B, T] bool, True for real tokens.
      start, stop: static layer range; `stop=None` means the last layer.
      interventions: LoRA / steering (an `emjax.interventions.Interventions`) applied inside the
        range (parts outside it are ignored).
      collect: also return every block's output.
      remat: rematerialisation policy of the block body (None, "full", "dots").
      attention: "xla" (exact for any padding) or "cudnn" (fused flash attention on NVIDIA
        GPUs; Qwen2-style configs and right-padded rows only, as in training batches).
      unroll: trace one block per layer instead of a loop (the same function): every layer's
        weights are then a slice at a constant index, which a Triton GEMM reads in place, where
        a loop's slices are copied out of the stacks first (see the comment below). Compiles
        longer, in proportion to the layers.

    Returns:
      x [B, T, D] after layer stop-1, and with collect=True also hidden [stop-start, B, T, D].
    """
    stop = cfg.n_layers if stop is None else stop
    if not 0 <= start <= stop <= cfg.n_layers:
        raise ValueError(f"layer range [{start}, {stop}) outside [0, {cfg.n_layers}]")
    if start == stop:
        return (x, jnp.zeros((0,) + x.shape, x.dtype)) if collect else x
    attention = resolve_attention(attention, cfg)
    cos, sin = rope_tables(positions, cfg.head_dim, cfg.rope_theta, x.dtype, cfg.rope_scaling)
    full_mask = attention_mask(positions, positions, mask, None)
    window_mask = (attention_mask(positions, positions, mask, cfg.sliding_window)
                   if cfg.sliding_window else full_mask)
    sliding = jnp.asarray(cfg.sliding_layers[start:stop])
    hooks = hooks_for(interventions, start, stop)
    lengths = jnp.sum(mask, axis=-1).astype(jnp.int32)

    # The whole stack is scanned as xs (JAX hands the same stack to the backward loop instead of
    # saving slices). A sub-range is indexed inside the loop instead, since slicing [start:stop] up
    # front copies the weights of the range (measured +20 ms per step for half of a 14B model on an
    # H100). In a loop on a GPU, XLA copies each layer's matrices out of the stack before Triton's
    # GEMMs either way (0.7 ms per layer, forward and backward, on an H100: issue 24's profile of
    # the all-layer LoRA step; cuBLAS GEMMs read their slices in place). `unroll` makes every index a
    # constant and the copies go: bench/diag/slice_copies.py counts 14 per layer -> 0, and the 14B
    # LoRA r32 step takes 0.2470 s instead of 0.2767 s on an H100.
    whole = start == 0 and stop == cfg.n_layers
    layers = weights.layers if whole else jnp.arange(start, stop)

    def body(h, inp):
        layer, is_sliding, layer_hooks = inp
        w = layer if whole else layer_view(weights.layers, layer)
        if attention == "cudnn":
            attn_fn = lambda q, k, v: cudnn_attend(q, k, v, lengths, cfg)
        else:
            m = jnp.where(is_sliding, window_mask, full_mask)
            attn_fn = lambda q, k, v: attend(q, k, v, m, cfg)
        h = constrain_rows(block(w, h, cos, sin, attn_fn, cfg, layer_hooks, lean=remat is None))
        return h, (h if collect else None)

    x, hidden = jax.lax.scan(_remat(body, remat), x, (layers, sliding, hooks), unroll=bool(unroll))
    return (x, hidden) if collect else x


def run_suffix(weights: Weights, cfg: ModelConfig, x_frozen: jax.Array, positions: jax.Array, mask: jax.Array,
               start: int, interventions: HookSource | None, **kwargs) -> jax.Array:
    """Blocks [start, L) under `interventions`, from the *frozen* model's residual entering `start`.

    Prefix sharing: layers [0, start) ran without the intervention, which is exact when `start`
    is at most `interventions.shared_prefix_layers(cfg)`. The block start - 1 may then carry
    steering vectors at residual sites only (`emjax.model.hooks.residual_sites`): they are added
    here through the same hook as inside a block. (In low precision the vector is added after
    the block's residual sum instead of inside it: the same function up to rounding order.)
    kwargs as in `run_layers`. Returns [B, T, D].
    """
    x = x_frozen
    if interventions is not None and start > 0:
        limit = interventions.shared_prefix_layers(cfg)
        if start > limit:
            raise ValueError(f"the frozen prefix [0, {start}) covers intervened layers; the shared prefix "
                             f"of this intervention ends at layer {limit}")
        boundary = hooks_for(interventions, start - 1, start)
        if boundary is not None:
            for site in residual_sites(cfg):
                x = add_steering(boundary.layer(0), site, x)
    return run_layers(weights, cfg, x, positions, mask, start, None, interventions, **kwargs)


@functools.partial(jax.jit, static_argnames=("cfg", "collect", "remat"))
def forward(weights: Weights, cfg: ModelConfig, tokens: jax.Array, mask: jax.Array | None = None,
            positions: jax.Array | None = None, interventions: HookSource | None = None,
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
