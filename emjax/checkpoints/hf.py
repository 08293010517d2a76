"""Hugging Face tensors -> the emjax `Weights` tree.

The Hugging Face names come from the weight schema (`emjax.model.schema`) and serve every source:
a safetensors folder, a dequantised GGUF, or a live PyTorch `state_dict` in tests. Tensors arrive
one at a time and go to the device in their stored layout (a host transpose of a bf16 matrix runs
at a few hundred MB/s, the device's at TB/s); each is transposed and cast there and written in
place (donated) into a preallocated stacked buffer, so host memory holds a few tensors at a time
and never a full float32 copy of the model. Reads and host-to-device copies of the next tensors
overlap (`_prefetched`): a 14B bf16 folder loads at the page cache's / PCIe's rate, not numpy's.
"""

from __future__ import annotations

import collections
import functools
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Mapping, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from emjax.checkpoints.safetensors_file import CheckpointError, open_folder
from emjax.model.config import ModelConfig
from emjax.model.schema import LayerWeights, Weights, hf_names, layer_shapes, top_shapes

# Buffers some old checkpoints carry that are not weights.
_IGNORED = re.compile(r"rotary_emb\.inv_freq$")


# Tensors read and copied to the device ahead of the one being placed: enough to keep the disk /
# page cache and PCIe busy while the device transposes (ours, not tuned: with 8 a 14B folder loads at 2.8-3.3 GB/s
# on an H200, BENCHMARKS.md; other depths were not measured).
PREFETCH = 8

T = TypeVar("T")
R = TypeVar("R")


@functools.partial(jax.jit, donate_argnums=(0,))
def _set_row(buf, x, i):
    """buf[i] = x, in place (the stacked buffer is donated, so no copy of it is made)."""
    return buf.at[i].set(x.astype(buf.dtype))


@functools.partial(jax.jit, static_argnames=("transpose", "dtype"))
def _on_device_layout(x, transpose: bool, dtype):
    """A tensor as stored (PyTorch layout) -> the emjax layout and dtype, on the device."""
    return (x.T if transpose else x).astype(dtype)


def _prefetched(items: Iterable[T], fn: Callable[[T], R], depth: int = PREFETCH) -> Iterator[tuple[T, R]]:
    """(item, fn(item)) in order, with fn of the next `depth` items running in threads.

    `items` is drawn from this thread only (a generator need not be thread-safe); fn must be:
    here it reads a memory-mapped tensor and copies it to the device, which releases the GIL.
    """
    if depth <= 0:
        yield from ((x, fn(x)) for x in items)
        return
    with ThreadPoolExecutor(depth) as pool:
        pending: collections.deque = collections.deque()
        for x in items:
            pending.append((x, pool.submit(fn, x)))
            if len(pending) > depth:
                y, f = pending.popleft()
                yield y, f.result()
        while pending:
            y, f = pending.popleft()
            yield y, f.result()


def weights_from_tensors(cfg: ModelConfig, tensors: Iterable[tuple[str, np.ndarray]], *,
                         dtype=jnp.bfloat16, shardings: Weights | None = None,
                         source: str = "checkpoint", expected_names: Iterable[str] | None = None,
                         on_tensor: Callable[[int], None] | None = None,
                         file_of: Callable[[str], str] | None = None) -> Weights:
    """Builds `Weights` from (HF name, array in PyTorch layout) pairs, one tensor at a time.

    Args:
      tensors: iterable of (name, array); arrays may be memory-mapped and of any float dtype.
      dtype: dtype of the resulting weights.
      shardings: optional tree of `jax.sharding.Sharding` (same structure as Weights); each
        buffer is allocated with its sharding and each tensor lands on its shard directly.
      source: named in error messages (file or folder).
      expected_names: the full list of names the source holds, checked before any tensor is read,
        so a missing or unexpected tensor fails fast.
      on_tensor: called with each tensor's size in bytes as stored, once it is placed (progress).
      file_of: the file holding a tensor, for messages (default: `source`).

    Raises:
      CheckpointError naming missing, unexpected, misshapen or non-float tensors (and their file).
    """
    table = hf_names(cfg)  # name -> (schema leaf, layer index or None)
    want = set(table)
    file_of = file_of or (lambda name: source)
    if expected_names is not None:
        _check_names(cfg, set(expected_names), want, source, file_of)
    lshapes, tshapes = layer_shapes(cfg), top_shapes(cfg)
    layer_sh = shardings.layers if shardings is not None else None

    def alloc(field, shape, sharding):
        return jnp.zeros(shape, dtype, device=sharding)

    def to_device(item):
        """The stored tensor on the device, unsharded (None when it is not a weight of this config:
        nothing is copied). With shardings, the host array itself (placed below, slice by slice)."""
        name, arr = item
        if name not in table or shardings is not None:
            return None
        return jax.device_put(np.asarray(arr))

    buffers: dict[str, jax.Array] = {}
    seen: set[str] = set()
    unexpected = []
    for (name, arr), stored in _prefetched(tensors, to_device):
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
            raise CheckpointError(f"{file_of(name)}: tensor {name!r} has shape {tuple(arr.shape)}, expected "
                                  f"{tuple(torch_shape)} for this config")
        check_float(name, arr.dtype, file_of(name))
        if stored is not None:  # one device: transpose and cast there
            x = _on_device_layout(stored, transpose, jnp.dtype(dtype))
        else:  # sharded buffers: each device gets its slice of the host array
            host = np.asarray(arr)
            x = np.ascontiguousarray(host.T if transpose else host)
        if layer is None:
            sharding = getattr(shardings, field) if shardings is not None else None
            buffers[field] = jax.device_put(x if stored is not None else x.astype(dtype), sharding)
        else:
            if field not in buffers:
                sharding = getattr(layer_sh, field) if layer_sh is not None else None
                buffers[field] = alloc(field, (cfg.n_layers,) + shape, sharding)
            buffers[field] = _set_row(buffers[field], x, layer)
        seen.add(name)
        if on_tensor is not None:
            on_tensor(int(np.asarray(arr).nbytes))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected tensors for a {cfg.family} config: "
                              f"{_fmt(_with_files(sorted(unexpected), file_of, source))}")
    missing = sorted(want - seen)
    if missing:
        raise CheckpointError(f"{source}: missing tensors: {_fmt(missing)}")
    layers = LayerWeights(**{f: buffers[f] for f in lshapes})
    return Weights(layers=layers, **{f: buffers[f] for f in tshapes})


def check_tied_head(cfg: ModelConfig, names: Iterable[str], get: Callable[[str], np.ndarray], source: str) -> None:
    """A tied config (`tie_word_embeddings`) whose source also stores `lm_head.weight`: only when it
    equals the embedding. Otherwise the file is ambiguous (transformers 4 tied the head to the
    embedding, transformers 5 keeps the stored head), so it is refused rather than guessed."""
    if not cfg.tie_embeddings or "lm_head.weight" not in set(names):
        return
    head, embed = np.asarray(get("lm_head.weight")), np.asarray(get("model.embed_tokens.weight"))
    same = head.shape == embed.shape and (
        np.array_equal(head.view(np.uint8), embed.view(np.uint8)) if head.dtype == embed.dtype
        else np.array_equal(head.astype(np.float32), embed.astype(np.float32)))
    if not same:
        raise CheckpointError(f"{source}: config.json ties the output head to the embedding (tie_word_embeddings), "
                              "but the checkpoint stores an 'lm_head.weight' that differs from "
                              "'model.embed_tokens.weight': set tie_word_embeddings to false to use the stored head, "
                              "or remove the tensor to tie them")


def _fmt(names: list[str], k: int = 8) -> str:
    more = f" ... and {len(names) - k} more" if len(names) > k else ""
    return ", ".join(names[:k]) + more


def _with_files(names: list[str], file_of: Callable[[str], str], source: str) -> list[str]:
    """Names with the file holding each, where that is not `source` itself (a shard of a folder)."""
    return [n if file_of(n) == source else f"{n} (in {file_of(n)})" for n in names]


def check_float(name: str, dtype, where: str) -> None:
    """CheckpointError unless a weight is stored as a float type (an integer tensor under a weight's
    name is a quantised or foreign checkpoint: casting it would load garbage)."""
    if not jnp.issubdtype(dtype, jnp.floating):
        raise CheckpointError(f"{where}: tensor {name!r} is stored as {np.dtype(dtype).name}, not a float type; "
                              "quantised checkpoints are not supported")


def _check_names(cfg: ModelConfig, have: set[str], want: set[str], source: str,
                 file_of: Callable[[str], str] | None = None) -> None:
    missing = sorted(want - have)
    if missing:
        raise CheckpointError(f"{source}: missing tensors: {_fmt(missing)}")
    extra = sorted(n for n in have - want if not _IGNORED.search(n)
                   and not (n == "lm_head.weight" and cfg.tie_embeddings))
    if extra:
        raise CheckpointError(f"{source}: unexpected tensors for a {cfg.family} config: "
                              f"{_fmt(_with_files(extra, file_of or (lambda n: source), source))}")


# (HF name, index into the tensor in the emjax layout) -> that slice as a host array
SliceReader = Callable[[str, tuple], np.ndarray]


def weights_from_slices(cfg: ModelConfig, read: SliceReader, shapes: Mapping[str, tuple[int, ...]], *,
                        shardings: Weights, dtype=jnp.bfloat16, source: str = "checkpoint",
                        file_of: Callable[[str], str] | None = None) -> Weights:
    """Builds sharded `Weights` reading only the slices this process's devices hold.

    Each leaf is made with `jax.make_array_from_callback`: for every addressable device, `read`
    gets the tensor's name and the device's index (in the emjax layout, transposed back here) and
    returns that slice; a per-layer leaf reads its slice of each layer in the device's layer
    range. Across hosts, every process reads only its own shards.

    shapes: every HF name of the source -> its shape (PyTorch layout), checked before any read.
    file_of: the file holding a tensor, for messages (default: `source`).
    """
    table = hf_names(cfg)
    file_of = file_of or (lambda name: source)
    _check_names(cfg, set(shapes), set(table), source, file_of)
    by_leaf: dict[str, list[str]] = {}
    for name, (leaf, layer) in table.items():
        if tuple(shapes[name]) != tuple(leaf.hf_shape(cfg)):
            raise CheckpointError(f"{file_of(name)}: tensor {name!r} has shape {tuple(shapes[name])}, expected "
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
                   cfg: ModelConfig | None = None, progress: bool = False) -> tuple[ModelConfig, Weights]:
    """Loads a Hugging Face checkpoint folder (config.json + safetensors, sharded or not).

    Returns (config, weights). With `shardings`, each process reads only the slices of its devices
    straight from the memory-mapped files (`weights_from_slices`); without, one tensor at a time
    (`weights_from_tensors`). progress: a bar in GB with the read rate, and one line with the
    bytes read, seconds and GB/s once the weights are on the device.
    """
    cfg = cfg or ModelConfig.from_hf(folder)
    where = open_folder(folder)
    check_tied_head(cfg, where, lambda n: where[n].get(n), folder)
    with _ReadMeter(folder, sum(f.nbytes(n) for n, f in where.items()), progress) as meter:
        if shardings is None:
            tensors = ((n, f.get(n)) for n, f in where.items())
            weights = weights_from_tensors(cfg, tensors, dtype=dtype, source=folder, expected_names=list(where),
                                           on_tensor=meter.add, file_of=lambda n: where[n].path)
        else:
            def read(n, idx):
                part = np.asarray(where[n].get(n)[idx])
                meter.add(part.nbytes)
                return part
            shapes = {n: f.shape(n) for n, f in where.items()}
            for n, f in where.items():
                check_float(n, f.get(n).dtype, f.path)
            weights = weights_from_slices(cfg, read, shapes, shardings=shardings, dtype=dtype, source=folder,
                                          file_of=lambda n: where[n].path)
        jax.block_until_ready(weights)
    return cfg, weights


class _ReadMeter:
    """Bytes read of a folder: a tqdm bar (GB, rate) and a closing line with the time and GB/s."""

    def __init__(self, folder: str, total: int, show: bool):
        self.folder, self.total, self.show, self.done = folder, total, show, 0
        self.bar = None

    def __enter__(self) -> "_ReadMeter":
        self.t0 = time.perf_counter()
        if self.show:
            self.bar = tqdm(total=self.total / 1e9, desc="loading weights", unit="GB",
                            bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} GB [{elapsed}, {rate_fmt}]")
        return self

    def add(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n / 1e9)

    def __exit__(self, kind, *_) -> None:
        seconds = time.perf_counter() - self.t0
        if self.bar is not None:
            self.bar.close()
        if self.show and kind is None:
            print(f"[emjax] weights of {self.folder}: {self.done / 1e9:.2f} GB read in {seconds:.1f} s "
                  f"({self.done / 1e9 / max(seconds, 1e-9):.2f} GB/s)", flush=True)


def weights_from_state_dict(cfg: ModelConfig, state_dict: Mapping[str, "np.ndarray"], **kw) -> Weights:
    """From a `{name: array}` mapping (e.g. a torch state dict converted with `.numpy()`)."""
    check_tied_head(cfg, state_dict, state_dict.__getitem__, kw.get("source", "checkpoint"))
    return weights_from_tensors(cfg, state_dict.items(), expected_names=state_dict.keys(), **kw)
