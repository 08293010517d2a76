"""The one weight schema: every leaf of a decoder declared once.

Each `Leaf` says, for one weight, its shape (from the config), its logical sharding axes, its
dtype rule, where it lives in a Hugging Face checkpoint and in a GGUF file, and whether that
source stores it transposed. Everything else derives from `TOP_LEAVES` and `LAYER_LEAVES`:
`abstract_weights`, `logical_axes`, `num_params`, `init_random`, the Hugging Face and GGUF
name maps of the loaders (`emjax.checkpoints`), the LoRA target list (`PROJECTIONS`) and the
device shardings (`emjax.model.sharding`). Adding a weight means adding one `Leaf` and one field
of `LayerWeights` or `Weights`.

Every per-layer weight carries a leading layer axis L so the blocks run under `jax.lax.scan`.
Projections are stored as `[in, out]` matrices (the transpose of PyTorch's `[out, in]`), so a
projection is `x @ w` and a LoRA delta on it is `(x @ A) @ B` with `A: [in, r]`, `B: [r, out]`.

Shape letters used throughout emjax: B batch, T sequence, D d_model, F ffn_dim, V vocab,
H query heads, K key/value heads, Dh head_dim, L layers, R LoRA rank.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Literal, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from emjax.model.config import ConfigError, ModelConfig
from emjax.model.families import family_of


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One weight of the decoder.

    Attributes:
      name: field of `Weights` (top-level leaves) or `LayerWeights` (per-layer leaves).
      shape: the emjax shape for a config, without the layer axis ([in, out] for projections).
      axes: logical axis names, one per dimension of `shape` (per-layer leaves get "layers" first).
      hf: Hugging Face name in the Llama/Qwen2 layout; per-layer names are relative to
        `model.layers.{i}.`. A family whose checkpoints name it otherwise says so in its registry
        entry (`emjax.model.families`, `Family.hf_names`).
      gguf: llama.cpp name (per-layer: relative to `blk.{i}.`), or None where no GGUF is read.
      transpose: the checkpoint stores the PyTorch layout [out, in], the transpose of `shape`.
      kind: "matrix" (a projection; LoRA may target the per-layer ones), "bias", "norm", "embed".
      dtype: "model": stored in the dtype the model is loaded in (every leaf today; norms and
        softmax are computed in float32 inside the forward pass, as in Hugging Face).
      present: whether a config has this leaf, from its features (biases, post-branch norms, an
        untied unembedding).
    """

    name: str
    shape: Callable[[ModelConfig], tuple[int, ...]]
    axes: tuple[str, ...]
    hf: str
    gguf: Optional[str]
    transpose: bool
    kind: Literal["matrix", "bias", "norm", "embed"]
    dtype: Literal["model"] = "model"
    present: Callable[[ModelConfig], bool] = lambda cfg: True

    def hf_name(self, cfg: ModelConfig) -> str:
        return family_of(cfg).hf_names.get(self.name, self.hf)

    def hf_shape(self, cfg: ModelConfig) -> tuple[int, ...]:
        """Shape in the checkpoint's (PyTorch) layout."""
        s = self.shape(cfg)
        return s[::-1] if self.transpose else s


def _q(cfg: ModelConfig) -> int:
    return cfg.n_heads * cfg.head_dim


def _kv(cfg: ModelConfig) -> int:
    return cfg.n_kv_heads * cfg.head_dim


def _qkv_bias(cfg: ModelConfig) -> bool:
    return cfg.qkv_bias


TOP_LEAVES: tuple[Leaf, ...] = (
    Leaf("embed", lambda c: (c.vocab_size, c.d_model), ("vocab", "embed"), "model.embed_tokens.weight",
         "token_embd.weight", False, "embed"),
    Leaf("final_norm", lambda c: (c.d_model,), ("norm",), "model.norm.weight", "output_norm.weight", False, "norm"),
    Leaf("lm_head", lambda c: (c.d_model, c.vocab_size), ("embed", "vocab"), "lm_head.weight", "output.weight",
         True, "matrix", present=lambda c: not c.tie_embeddings),
)

LAYER_LEAVES: tuple[Leaf, ...] = (
    Leaf("attn_norm", lambda c: (c.d_model,), ("norm",), "input_layernorm.weight", "attn_norm.weight", False, "norm"),
    Leaf("q_proj", lambda c: (c.d_model, _q(c)), ("embed", "q_heads"), "self_attn.q_proj.weight", "attn_q.weight",
         True, "matrix"),
    Leaf("k_proj", lambda c: (c.d_model, _kv(c)), ("embed", "kv_heads"), "self_attn.k_proj.weight", "attn_k.weight",
         True, "matrix"),
    Leaf("v_proj", lambda c: (c.d_model, _kv(c)), ("embed", "kv_heads"), "self_attn.v_proj.weight", "attn_v.weight",
         True, "matrix"),
    Leaf("o_proj", lambda c: (_q(c), c.d_model), ("q_heads", "embed"), "self_attn.o_proj.weight",
         "attn_output.weight", True, "matrix"),
    # Llama's and Qwen's `post_attention_layernorm` is the pre-MLP norm (Gemma-2 renames it).
    Leaf("mlp_norm", lambda c: (c.d_model,), ("norm",), "post_attention_layernorm.weight", "ffn_norm.weight",
         False, "norm"),
    Leaf("gate_proj", lambda c: (c.d_model, c.ffn_dim), ("embed", "ffn"), "mlp.gate_proj.weight", "ffn_gate.weight",
         True, "matrix"),
    Leaf("up_proj", lambda c: (c.d_model, c.ffn_dim), ("embed", "ffn"), "mlp.up_proj.weight", "ffn_up.weight",
         True, "matrix"),
    Leaf("down_proj", lambda c: (c.ffn_dim, c.d_model), ("ffn", "embed"), "mlp.down_proj.weight", "ffn_down.weight",
         True, "matrix"),
    Leaf("q_bias", lambda c: (_q(c),), ("q_heads",), "self_attn.q_proj.bias", "attn_q.bias", False, "bias",
         present=_qkv_bias),
    Leaf("k_bias", lambda c: (_kv(c),), ("kv_heads",), "self_attn.k_proj.bias", "attn_k.bias", False, "bias",
         present=_qkv_bias),
    Leaf("v_bias", lambda c: (_kv(c),), ("kv_heads",), "self_attn.v_proj.bias", "attn_v.bias", False, "bias",
         present=_qkv_bias),
    Leaf("o_bias", lambda c: (c.d_model,), ("norm",), "self_attn.o_proj.bias", "attn_output.bias", False, "bias",
         present=lambda c: c.o_bias),
    # Names of the one HF layout with post-branch norms (Gemma-2's); a family that has them says
    # what it calls them in `Family.hf_names` (where `post_attention_layernorm` is the pre-MLP norm).
    Leaf("post_attn_norm", lambda c: (c.d_model,), ("norm",), "post_attention_layernorm.weight", None, False, "norm",
         present=lambda c: c.post_attn_norm),
    Leaf("post_mlp_norm", lambda c: (c.d_model,), ("norm",), "post_feedforward_layernorm.weight", None, False,
         "norm", present=lambda c: c.post_mlp_norm),
)

# The projections a LoRA adapter may target (Hugging Face short names), in block order.
PROJECTIONS: tuple[str, ...] = tuple(l.name for l in LAYER_LEAVES if l.kind == "matrix")

HF_LAYER_PREFIX = "model.layers.{i}."
GGUF_LAYER_PREFIX = "blk.{i}."


@flax.struct.dataclass
class LayerWeights:
    """Weights of all L blocks, stacked on a leading layer axis (see `LAYER_LEAVES`).

    Attributes:
      attn_norm: [L, D] RMSNorm before attention (`input_layernorm`).
      q_proj / k_proj / v_proj: [L, D, H*Dh] / [L, D, K*Dh] / [L, D, K*Dh].
      q_bias / k_bias / v_bias: [L, H*Dh] / [L, K*Dh] / [L, K*Dh], or None (cfg.qkv_bias).
      o_proj: [L, H*Dh, D]; o_bias: [L, D] or None (cfg.o_bias).
      post_attn_norm: [L, D] norm of the attention branch before the residual add, or None
        (cfg.post_attn_norm).
      mlp_norm: [L, D] RMSNorm before the MLP.
      gate_proj / up_proj: [L, D, F]; down_proj: [L, F, D].
      post_mlp_norm: [L, D] norm of the MLP branch before the residual add, or None.
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
    o_bias: Optional[jax.Array] = None


@flax.struct.dataclass
class Weights:
    """All weights of a decoder (see `TOP_LEAVES`).

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


# ---------------------------------------------------------------------------------------------
# What derives from the leaves


def top_leaves(cfg: ModelConfig) -> tuple[Leaf, ...]:
    return tuple(l for l in TOP_LEAVES if l.present(cfg))


def layer_leaves(cfg: ModelConfig) -> tuple[Leaf, ...]:
    return tuple(l for l in LAYER_LEAVES if l.present(cfg))


def layer_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Per-layer weight shapes (without the layer axis) of the leaves `cfg` has."""
    return {l.name: l.shape(cfg) for l in layer_leaves(cfg)}


def top_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    return {l.name: l.shape(cfg) for l in top_leaves(cfg)}


def map_leaves(cfg: ModelConfig, fn: Callable[[Leaf, tuple[int, ...], tuple[str, ...]], object]) -> Weights:
    """A `Weights` tree of fn(leaf, shape, axes) over the leaves `cfg` has (None where absent),
    with the stacked shape and axes ("layers" first) for per-layer leaves."""
    layers = LayerWeights(**{l.name: fn(l, (cfg.n_layers,) + l.shape(cfg), ("layers",) + l.axes)
                             for l in layer_leaves(cfg)})
    return Weights(layers=layers, **{l.name: fn(l, l.shape(cfg), l.axes) for l in top_leaves(cfg)})


def logical_axes(cfg: ModelConfig) -> Weights:
    """A `Weights` tree of logical-axis tuples matching `cfg` (None leaves where absent)."""
    return map_leaves(cfg, lambda leaf, shape, axes: axes)


def abstract_weights(cfg: ModelConfig, dtype=jnp.bfloat16) -> Weights:
    """`jax.ShapeDtypeStruct` leaves for `cfg`: shapes without allocating anything."""
    return map_leaves(cfg, lambda leaf, shape, axes: jax.ShapeDtypeStruct(shape, dtype))


def num_params(cfg: ModelConfig) -> int:
    """Number of weights in a checkpoint of `cfg` (tied embeddings counted once)."""
    top = sum(math.prod(l.shape(cfg)) for l in top_leaves(cfg))
    return top + cfg.n_layers * sum(math.prod(l.shape(cfg)) for l in layer_leaves(cfg))


def count_params(weights: Weights) -> int:
    """Number of weights in a loaded tree."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(weights)))


def hf_names(cfg: ModelConfig) -> dict[str, tuple[Leaf, int | None]]:
    """Every Hugging Face tensor name of a `cfg` checkpoint -> (leaf, layer index or None), in
    model order: embedding, layers 0..L-1, final norm, lm_head."""
    embed, *rest = top_leaves(cfg)
    out: dict[str, tuple[Leaf, int | None]] = {embed.hf_name(cfg): (embed, None)}
    for i in range(cfg.n_layers):
        prefix = HF_LAYER_PREFIX.format(i=i)
        out.update({prefix + l.hf_name(cfg): (l, i) for l in layer_leaves(cfg)})
    out.update({l.hf_name(cfg): (l, None) for l in rest})
    n_leaves = len(rest) + 1 + cfg.n_layers * len(layer_leaves(cfg))
    if len(out) != n_leaves:  # two leaves under one name: a registry entry's hf_names is wrong
        raise ConfigError(f"the {cfg.family} weight names collide: {sorted(l.hf_name(cfg) for l in layer_leaves(cfg))}")
    return out


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every Hugging Face tensor name of a `cfg` checkpoint -> its PyTorch-layout shape."""
    return {name: leaf.hf_shape(cfg) for name, (leaf, _) in hf_names(cfg).items()}


def gguf_to_hf_name(gguf_name: str, cfg: ModelConfig | None = None) -> str | None:
    """The Hugging Face name of a GGUF tensor (e.g. blk.3.attn_q.bias -> model.layers.3.
    self_attn.q_proj.bias), or None if it is no weight (of `cfg`, when given; without, in the
    schema's own names)."""
    top = TOP_LEAVES if cfg is None else top_leaves(cfg)
    per_layer = LAYER_LEAVES if cfg is None else layer_leaves(cfg)
    name = lambda l: l.hf if cfg is None else l.hf_name(cfg)
    for l in top:
        if l.gguf == gguf_name:
            return name(l)
    head, _, rest = gguf_name.partition(".")
    idx, _, suffix = rest.partition(".")
    if head == "blk" and idx.isdigit():
        for l in per_layer:
            if l.gguf is not None and l.gguf == suffix:
                return HF_LAYER_PREFIX.format(i=int(idx)) + name(l)
    return None


def hf_module_path(module: str, cfg: ModelConfig | None = None) -> str:
    """The block sub-module path of a projection in the HF module tree: "down_proj" ->
    "mlp.down_proj" (what PEFT adapter keys are built from)."""
    leaf = next((l for l in LAYER_LEAVES if l.name == module and l.kind == "matrix"), None)
    if leaf is None:
        raise ValueError(f"unknown projection {module!r}; choose from {PROJECTIONS}")
    name = leaf.hf if cfg is None else leaf.hf_name(cfg)
    return name.rsplit(".", 1)[0]


# ---------------------------------------------------------------------------------------------
# Random and cast trees


def init_random(cfg: ModelConfig, key: jax.Array, dtype=jnp.float32, scale: float = 0.02) -> Weights:
    """Random weights with the shapes of `cfg` (for tests and benchmarks; values irrelevant).

    Norm weights are drawn around 1 where the norm multiplies w and around 0 where it multiplies
    1 + w (cfg.norm_plus_one), so both conventions see a non-trivial scale.
    """
    kinds = map_leaves(cfg, lambda leaf, shape, axes: leaf.kind)
    abstract = abstract_weights(cfg, dtype)
    leaves, treedef = jax.tree.flatten(abstract)
    keys = jax.random.split(key, len(leaves))
    out = []
    for kind, leaf, k in zip(jax.tree.leaves(kinds), leaves, keys):
        x = jax.random.normal(k, leaf.shape, jnp.float32)
        x = (0.0 if cfg.norm_plus_one else 1.0) + 0.1 * x if kind == "norm" else scale * x
        out.append(x.astype(dtype))
    return jax.tree.unflatten(treedef, out)


def cast(weights: Weights, dtype) -> Weights:
    return jax.tree.map(lambda x: x.astype(dtype), weights)
