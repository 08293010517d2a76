"""Hugging Face tensors -> the emjax `Weights` tree.

The Hugging Face names come from the weight schema (`emjax.model.schema`) and serve every source:
a safetensors folder, a dequantised GGUF, or a live PyTorch `state_dict` in tests. Tensors arrive
one at a time; each is transposed and cast on the device and written into a preallocated
(optionally sharded) stacked buffer, so host memory holds one tensor at a time and never a full
float32 copy of the model.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from emjax.checkpoints.safetensors_file import CheckpointError, iter_folder_tensors, open_folder
from emjax.model.config import ModelConfig
from emjax.model.schema import LayerWeights, Weights, hf_names, layer_shapes, top_shapes

# Buffers some old checkpoints carry that are not weights.
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")


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
    table = hf_names(cfg)  # name -> (schema leaf, layer index or None)
    want = set(table)
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
        hit = table.get(name)
        if hit is None:
            if not _IGNORED.search(name) and not (name == "lm_head.weight" and cfg.tie_embeddings):
                unexpected.append(name)
            continue
        leaf, layer = hit
        field, transpose = leaf.name, leaf.transpose
        shape = lshapes[field] if layer is not None else tshapes[field]
        found = tuple(arr.shape[::-1]) if transpose else tuple(arr.shape)
        if found != shape:
            torch_shape = shape[::-1] if transpose else shape
            raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(arr.shape)}, expected "
                                  f"{tuple(torch_shape)} for this config")
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


# (HF name, index into the tensor in the emjax layout) -> that slice as a host array
SliceReader = Callable[[str, tuple], np.ndarray]


def weights_from_slices(cfg: ModelConfig, read: SliceReader, shapes: Mapping[str, tuple[int, ...]], *,
                        shardings: Weights, dtype=jnp.bfloat16, source: str = "checkpoint") -> Weights:
    """Builds sharded `Weights` reading only the slices this process's devices hold.

    Each leaf is made with `jax.make_array_from_callback`: for every addressable device, `read`
    gets the tensor's name and the device's index (in the emjax layout, transposed back here) and
    returns that slice; a per-layer leaf reads its slice of each layer in the device's layer
    range. Across hosts, every process reads only its own shards.

    shapes: every HF name of the source -> its shape (PyTorch layout), checked before any read.
    """
    table = hf_names(cfg)
    _check_names(cfg, set(shapes), set(table), source)
    by_leaf: dict[str, list[str]] = {}
    for name, (leaf, layer) in table.items():
        if tuple(shapes[name]) != tuple(leaf.hf_shape(cfg)):
            raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(shapes[name])}, expected "
                                  f"{tuple(leaf.hf_shape(cfg))} for this config")
        by_leaf.setdefault(leaf.name, []).append(name)  # in layer order
    leaves_of = {name: leaf for name, (leaf, _) in table.items()}
    np_dtype = np.dtype(dtype)

    def tensor_slice(name: str, index: tuple) -> np.ndarray:
        idx = tuple(index[::-1]) if leaves_of[name].transpose else tuple(index)
        part = np.asarray(read(name, idx))
        return (part.T if leaves_of[name].transpose else part).astype(np_dtype)

    lshapes, tshapes = layer_shapes(cfg), top_shapes(cfg)

    def build(field: str, stacked: bool, sharding) -> jax.Array:
        names = by_leaf[field]
        if not stacked:
            return jax.make_array_from_callback(tshapes[field], sharding, lambda i: tensor_slice(names[0], i))
        shape = (cfg.n_layers,) + lshapes[field]

        def layers(index):
            rows = range(cfg.n_layers)[index[0]]
            return np.stack([tensor_slice(names[r], index[1:]) for r in rows])
        return jax.make_array_from_callback(shape, sharding, layers)

    layer_w = LayerWeights(**{f: build(f, True, getattr(shardings.layers, f)) for f in lshapes})
    return Weights(layers=layer_w, **{f: build(f, False, getattr(shardings, f)) for f in tshapes})


def load_hf_folder(folder: str, *, dtype=jnp.bfloat16, shardings: Weights | None = None,
                   cfg: ModelConfig | None = None) -> tuple[ModelConfig, Weights]:
    """Loads a Hugging Face checkpoint folder (config.json + safetensors, sharded or not).

    Returns (config, weights). With `shardings`, each process reads only the slices of its devices
    straight from the memory-mapped files (`weights_from_slices`); without, one tensor at a time.
    """
    cfg = cfg or ModelConfig.from_hf(folder)
    if shardings is None:
        names, tensors = iter_folder_tensors(folder)
        return cfg, weights_from_tensors(cfg, tensors, dtype=dtype, source=folder, expected_names=names)
    where = open_folder(folder)
    shapes = {n: f.shape(n) for n, f in where.items()}
    return cfg, weights_from_slices(cfg, lambda n, idx: where[n].get(n)[idx], shapes, shardings=shardings,
                                    dtype=dtype, source=folder)


def weights_from_state_dict(cfg: ModelConfig, state_dict: Mapping[str, "np.ndarray"], **kw) -> Weights:
    """From a `{name: array}` mapping (e.g. a torch state dict converted with `.numpy()`)."""
    return weights_from_tensors(cfg, state_dict.items(), expected_names=state_dict.keys(), **kw)
