"""Typed weight pytrees of a decoder, with logical axis names for sharding.

Every per-layer weight carries a leading layer axis L so the blocks run under `jax.lax.scan`.
Projections are stored as `[in, out]` matrices (the transpose of PyTorch's `[out, in]`), so a
projection is `x @ w` and a LoRA delta on it is `(x @ A) @ B` with `A: [in, r]`, `B: [r, out]`.

Shape letters used throughout emjax: B batch, T sequence, D d_model, F ffn_dim, V vocab,
H query heads, K key/value heads, Dh head_dim, L layers, R LoRA rank.
"""

from __future__ import annotations

from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from emjax.config import ModelConfig

# The projections a LoRA adapter may target, by their Hugging Face short names.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@flax.struct.dataclass
class LayerWeights:
    """Weights of all L blocks, stacked on a leading layer axis.

    Attributes:
      attn_norm: [L, D] RMSNorm before attention (`input_layernorm`).
      q_proj / k_proj / v_proj: [L, D, H*Dh] / [L, D, K*Dh] / [L, D, K*Dh].
      q_bias / k_bias / v_bias: [L, H*Dh] / [L, K*Dh] / [L, K*Dh], or None (Gemma-2).
      o_proj: [L, H*Dh, D].
      post_attn_norm: [L, D] norm of the attention branch before the residual add (Gemma-2 only).
      mlp_norm: [L, D] RMSNorm before the MLP (Qwen `post_attention_layernorm`,
        Gemma-2 `pre_feedforward_layernorm`).
      gate_proj / up_proj: [L, D, F]; down_proj: [L, F, D].
      post_mlp_norm: [L, D] norm of the MLP branch before the residual add (Gemma-2 only).
    """

    attn_norm: jax.Array
    q_proj: jax.Array
    k_proj: jax.Array
    v_proj: jax.Array
    o_proj: jax.Array
    mlp_norm: jax.Array
    gate_proj: jax.Array
    up_proj: jax.Array
    down_proj: jax.Array
    q_bias: Optional[jax.Array] = None
    k_bias: Optional[jax.Array] = None
    v_bias: Optional[jax.Array] = None
    post_attn_norm: Optional[jax.Array] = None
    post_mlp_norm: Optional[jax.Array] = None


@flax.struct.dataclass
class Weights:
    """All weights of a decoder.

    Attributes:
      embed: [V, D] token embedding.
      layers: the stacked blocks.
      final_norm: [D].
      lm_head: [D, V] unembedding, or None when tied to `embed`.
    """

    embed: jax.Array
    layers: LayerWeights
    final_norm: jax.Array
    lm_head: Optional[jax.Array] = None


def layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Per-layer weight shapes (without the layer axis) that a checkpoint must provide."""
    d, f, q, kv = cfg.d_model, cfg.ffn_dim, cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    shapes = dict(attn_norm=(d,), q_proj=(d, q), k_proj=(d, kv), v_proj=(d, kv), o_proj=(q, d),
                  mlp_norm=(d,), gate_proj=(d, f), up_proj=(d, f), down_proj=(f, d))
    if cfg.qkv_bias:
        shapes.update(q_bias=(q,), k_bias=(kv,), v_bias=(kv,))
    if cfg.is_gemma:
        shapes.update(post_attn_norm=(d,), post_mlp_norm=(d,))
    return shapes


def top_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    shapes = dict(embed=(cfg.vocab_size, cfg.d_model), final_norm=(cfg.d_model,))
    if not cfg.tie_embeddings:
        shapes["lm_head"] = (cfg.d_model, cfg.vocab_size)
    return shapes


# Logical axis names per leaf (layer axis first for stacked weights). `emjax.sharding` maps
# these onto a device mesh; FSDP shards "embed", tensor parallelism shards heads/ffn/vocab.
LAYER_AXES: dict[str, tuple[str, ...]] = dict(
    attn_norm=("layers", "norm"), q_proj=("layers", "embed", "q_heads"),
    k_proj=("layers", "embed", "kv_heads"), v_proj=("layers", "embed", "kv_heads"),
    o_proj=("layers", "q_heads", "embed"), mlp_norm=("layers", "norm"),
    gate_proj=("layers", "embed", "ffn"), up_proj=("layers", "embed", "ffn"),
    down_proj=("layers", "ffn", "embed"), q_bias=("layers", "q_heads"),
    k_bias=("layers", "kv_heads"), v_bias=("layers", "kv_heads"),
    post_attn_norm=("layers", "norm"), post_mlp_norm=("layers", "norm"))
TOP_AXES: dict[str, tuple[str, ...]] = dict(
    embed=("vocab", "embed"), final_norm=("norm",), lm_head=("embed", "vocab"))


def logical_axes(cfg: ModelConfig) -> Weights:
    """A `Weights` tree of logical-axis tuples matching `cfg` (None leaves where absent)."""
    layers = LayerWeights(**{k: LAYER_AXES[k] for k in layer_shapes(cfg)})
    top = {k: TOP_AXES[k] for k in top_shapes(cfg)}
    return Weights(layers=layers, **top)


def abstract_weights(cfg: ModelConfig, dtype=jnp.bfloat16) -> Weights:
    """`jax.ShapeDtypeStruct` leaves for `cfg`: shapes without allocating anything."""
    layers = LayerWeights(**{k: jax.ShapeDtypeStruct((cfg.n_layers,) + s, dtype)
                             for k, s in layer_shapes(cfg).items()})
    top = {k: jax.ShapeDtypeStruct(s, dtype) for k, s in top_shapes(cfg).items()}
    return Weights(layers=layers, **top)


def init_random(cfg: ModelConfig, key: jax.Array, dtype=jnp.float32, scale: float = 0.02) -> Weights:
    """Random weights with the shapes of `cfg` (for tests and benchmarks; values irrelevant).

    Norm weights are drawn around 1 for Qwen (multiplies w) and around 0 for Gemma (multiplies
    1 + w), so both conventions see a non-trivial scale.
    """
    abstract = abstract_weights(cfg, dtype)
    leaves, treedef = jax.tree.flatten(abstract)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(abstract)[0]]
    keys = jax.random.split(key, len(leaves))
    out = []
    for path, leaf, k in zip(paths, leaves, keys):
        x = jax.random.normal(k, leaf.shape, jnp.float32)
        if "norm" in path:
            x = (0.0 if cfg.is_gemma else 1.0) + 0.1 * x
        else:
            x = scale * x
        out.append(x.astype(dtype))
    return jax.tree.unflatten(treedef, out)


def cast(weights: Weights, dtype) -> Weights:
    return jax.tree.map(lambda x: x.astype(dtype), weights)


def count_params(weights: Weights) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(weights)))
