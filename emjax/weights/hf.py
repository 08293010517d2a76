"""Hugging Face tensors -> the emjax `Weights` tree.

One mapping table from Hugging Face parameter names to tree fields serves every source: a
safetensors folder, a dequantised GGUF, or a live PyTorch `state_dict` in tests. Tensors arrive
one at a time; each is transposed and cast on the device and written into a preallocated
(optionally sharded) stacked buffer, so host memory holds one tensor at a time and never a full
float32 copy of the model.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from emjax.config import ModelConfig
from emjax.params import LayerWeights, Weights, layer_shapes, top_shapes
from emjax.weights.safetensors_file import CheckpointError, iter_folder_tensors

_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_TOP = {"model.embed_tokens.weight": ("embed", False), "model.norm.weight": ("final_norm", False),
        "lm_head.weight": ("lm_head", True)}
_COMMON_LAYER = {
    "input_layernorm.weight": ("attn_norm", False),
    "self_attn.q_proj.weight": ("q_proj", True), "self_attn.k_proj.weight": ("k_proj", True),
    "self_attn.v_proj.weight": ("v_proj", True), "self_attn.o_proj.weight": ("o_proj", True),
    "self_attn.q_proj.bias": ("q_bias", False), "self_attn.k_proj.bias": ("k_bias", False),
    "self_attn.v_proj.bias": ("v_bias", False),
    "mlp.gate_proj.weight": ("gate_proj", True), "mlp.up_proj.weight": ("up_proj", True),
    "mlp.down_proj.weight": ("down_proj", True),
}
# `post_attention_layernorm` is Qwen's pre-MLP norm but Gemma-2's attention-branch norm.
_QWEN_LAYER = {**_COMMON_LAYER, "post_attention_layernorm.weight": ("mlp_norm", False)}
_GEMMA_LAYER = {**_COMMON_LAYER, "post_attention_layernorm.weight": ("post_attn_norm", False),
                "pre_feedforward_layernorm.weight": ("mlp_norm", False),
                "post_feedforward_layernorm.weight": ("post_mlp_norm", False)}
# Buffers some old checkpoints carry that are not weights.
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")


def hf_name_to_field(cfg: ModelConfig, name: str) -> tuple[str, int | None, bool] | None:
    """HF name -> (tree field, layer index or None, transpose?) or None if not a weight of cfg."""
    if name in _TOP:
        field, t = _TOP[name]
        return (field, None, t) if field in top_shapes(cfg) else None
    m = _LAYER_RE.match(name)
    if not m:
        return None
    table = _GEMMA_LAYER if cfg.is_gemma else _QWEN_LAYER
    if m.group(2) not in table:
        return None
    field, t = table[m.group(2)]
    if field not in layer_shapes(cfg):
        return None
    return field, int(m.group(1)), t


def expected_hf_names(cfg: ModelConfig) -> set[str]:
    """Every tensor name a Hugging Face checkpoint of `cfg` must contain."""
    table = _GEMMA_LAYER if cfg.is_gemma else _QWEN_LAYER
    names = {n for n, (f, _) in _TOP.items() if f in top_shapes(cfg)}
    per_layer = [suffix for suffix, (f, _) in table.items() if f in layer_shapes(cfg)]
    names |= {f"model.layers.{i}.{s}" for i in range(cfg.n_layers) for s in per_layer}
    return names


@jax.jit
def _set_row(buf, x, i):
    return buf.at[i].set(x.astype(buf.dtype))


def weights_from_tensors(cfg: ModelConfig, tensors: Iterable[tuple[str, np.ndarray]], *,
                         dtype=jnp.bfloat16, shardings: Weights | None = None,
                         source: str = "checkpoint", expected_names: Iterable[str] | None = None) -> Weights:
    """Builds `Weights` from (HF name, array in PyTorch layout) pairs, one tensor at a time.

    Args:
      tensors: iterable of (name, array); arrays may be memory-mapped and of any float dtype.
      dtype: dtype of the resulting weights.
      shardings: optional tree of `jax.sharding.Sharding` (same structure as Weights); each
        buffer is allocated with its sharding and each tensor lands on its shard directly.
      source: named in error messages (file or folder).
      expected_names: the full list of names the source holds, checked before any tensor is read,
        so a missing or unexpected tensor fails fast.

    Raises:
      CheckpointError naming missing, unexpected or misshapen tensors.
    """
    want = expected_hf_names(cfg)
    if expected_names is not None:
        _check_names(cfg, set(expected_names), want, source)
    lshapes, tshapes = layer_shapes(cfg), top_shapes(cfg)
    layer_sh = shardings.layers if shardings is not None else None

    def alloc(field, shape, sharding):
        return jnp.zeros(shape, dtype, device=sharding)

    buffers: dict[str, jax.Array] = {}
    seen: set[str] = set()
    unexpected = []
    for name, arr in tensors:
        hit = hf_name_to_field(cfg, name)
        if hit is None:
            if not _IGNORED.search(name) and not (name == "lm_head.weight" and cfg.tie_embeddings):
                unexpected.append(name)
            continue
        field, layer, transpose = hit
        shape = lshapes[field] if layer is not None else tshapes[field]
        found = tuple(arr.shape[::-1]) if transpose else tuple(arr.shape)
        if found != shape:
            torch_shape = shape[::-1] if transpose else shape
            raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(arr.shape)}, expected "
                                  f"{tuple(torch_shape)} for this config")
        if layer is not None and not 0 <= layer < cfg.n_layers:
            unexpected.append(name)
            continue
        host = np.asarray(arr)
        x = host.T if transpose else host  # a view; the copy happens on device
        if layer is None:
            sharding = getattr(shardings, field) if shardings is not None else None
            buffers[field] = jax.device_put(np.ascontiguousarray(x).astype(dtype), sharding)
        else:
            if field not in buffers:
                sharding = getattr(layer_sh, field) if layer_sh is not None else None
                buffers[field] = alloc(field, (cfg.n_layers,) + shape, sharding)
            buffers[field] = _set_row(buffers[field], np.ascontiguousarray(x), layer)
        seen.add(name)
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensors for a {cfg.family} config: "
                              f"{_fmt(sorted(unexpected))}")
    missing = sorted(want - seen)
    if missing:
        raise CheckpointError(f"{source}: missing tensors: {_fmt(missing)}")
    layers = LayerWeights(**{f: buffers[f] for f in lshapes})
    return Weights(layers=layers, **{f: buffers[f] for f in tshapes})


def _fmt(names: list[str], k: int = 8) -> str:
    more = f" ... and {len(names) - k} more" if len(names) > k else ""
    return ", ".join(names[:k]) + more


def _check_names(cfg: ModelConfig, have: set[str], want: set[str], source: str) -> None:
    missing = sorted(want - have)
    if missing:
        raise CheckpointError(f"{source}: missing tensors: {_fmt(missing)}")
    extra = sorted(n for n in have - want if not _IGNORED.search(n)
                   and not (n == "lm_head.weight" and cfg.tie_embeddings))
    if extra:
        raise CheckpointError(f"{source}: unexpected tensors for a {cfg.family} config: {_fmt(extra)}")


def load_hf_folder(folder: str, *, dtype=jnp.bfloat16, shardings: Weights | None = None,
                   cfg: ModelConfig | None = None) -> tuple[ModelConfig, Weights]:
    """Loads a Hugging Face checkpoint folder (config.json + safetensors, sharded or not).

    Returns (config, weights). `shardings` places each tensor on its devices as it is read.
    """
    cfg = cfg or ModelConfig.from_hf(folder)
    names, tensors = iter_folder_tensors(folder)
    return cfg, weights_from_tensors(cfg, tensors, dtype=dtype, shardings=shardings,
                                     source=folder, expected_names=names)


def weights_from_state_dict(cfg: ModelConfig, state_dict: Mapping[str, "np.ndarray"], **kw) -> Weights:
    """From a `{name: array}` mapping (e.g. a torch state dict converted with `.numpy()`)."""
    return weights_from_tensors(cfg, state_dict.items(), expected_names=state_dict.keys(), **kw)
