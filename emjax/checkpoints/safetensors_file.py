"""A minimal, memory-mapped safetensors reader that understands bfloat16.

`safetensors`' numpy backend refuses bf16, and its torch backend would pull in PyTorch; the
format is simple (8-byte little-endian header length, a JSON header, raw little-endian data), so
we read it directly: each tensor is a zero-copy `np.memmap` view, so a 14B checkpoint is read one
tensor at a time and never held whole in host memory.
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

from emjax.errors import EmjaxError

DTYPES = {
    "BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F64": np.float64,
    "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64, "U8": np.uint8, "BOOL": np.bool_,
}
_MAX_HEADER = 100 * 2**20


class CheckpointError(EmjaxError, ValueError):
    """A checkpoint file or folder that cannot be loaded as asked; the message names it."""


class SafetensorsFile:
    """Read-only view of one .safetensors file: `names()`, `shape(name)`, `get(name)`."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{self.path}: truncated safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{self.path}: corrupt safetensors header (length {n}, file {size} bytes)")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{self.path}: corrupt safetensors header ({e})") from None
        self.metadata = header.pop("__metadata__", {}) or {}
        self._data_start = 8 + n
        self._entries = header
        for name, e in header.items():
            if e.get("dtype") not in DTYPES:
                raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype {e.get('dtype')!r}")
            begin, end = e["data_offsets"]
            want = int(np.prod(e["shape"], dtype=np.int64)) * np.dtype(DTYPES[e["dtype"]]).itemsize
            if end - begin != want:
                raise CheckpointError(f"{self.path}: tensor {name!r} has {end - begin} bytes for shape "
                                      f"{e['shape']} {e['dtype']} (expected {want})")
            if self._data_start + end > size:
                raise CheckpointError(f"{self.path}: truncated: tensor {name!r} ends at byte "
                                      f"{self._data_start + end} but the file has {size} bytes")

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def nbytes(self, name: str) -> int:
        begin, end = self._entries[name]["data_offsets"]
        return end - begin

    def get(self, name: str) -> np.ndarray:
        """The tensor as a read-only memory-mapped array (no copy)."""
        e = self._entries[name]
        dtype = DTYPES[e["dtype"]]
        begin, end = e["data_offsets"]
        shape = tuple(e["shape"])
        if end == begin:
            return np.zeros(shape, dtype)
        return np.memmap(self.path, dtype=dtype, mode="r", offset=self._data_start + begin, shape=shape)


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
    """Writes `tensors` (numpy, bf16 via ml_dtypes allowed) as one .safetensors file."""
    inverse = {np.dtype(v): k for k, v in DTYPES.items()}
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype not in inverse:
            raise ValueError(f"tensor {name!r}: unsupported dtype {arr.dtype}")
        blob = arr.tobytes()
        header[name] = {"dtype": inverse[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the spec pads the header to 8 bytes
    tmp = os.fspath(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)


def open_folder(folder: str | os.PathLike) -> dict[str, SafetensorsFile]:
    """Every tensor of a Hugging Face checkpoint folder (one file or an index of shards): name ->
    the file holding it, checked against the index. Refuses pickled `.bin` weights."""
    folder = os.fspath(folder)
    index = os.path.join(folder, "model.safetensors.index.json")
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e!r})") from None
        shards = sorted(set(weight_map.values()))
    elif os.path.exists(single):
        weight_map, shards = None, ["model.safetensors"]
    else:
        pickled = [f for f in os.listdir(folder) if f.endswith((".bin", ".pt", ".pth"))]
        if pickled:
            raise CheckpointError(
                f"{folder}: only pickled PyTorch weights found ({', '.join(sorted(pickled))}); emjax never "
                "loads pickles. Convert once with transformers: "
                "AutoModelForCausalLM.from_pretrained(folder).save_pretrained(out, safe_serialization=True)")
        raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    files = {}
    for s in shards:
        p = os.path.join(folder, s)
        if not os.path.exists(p):
            raise CheckpointError(f"{folder}: shard {s} listed in the index is missing")
        files[s] = SafetensorsFile(p)
    where: dict[str, SafetensorsFile] = {}
    for s, f in files.items():
        for n in f.names():
            if weight_map is not None and weight_map.get(n) != s:
                raise CheckpointError(f"{f.path}: tensor {n!r} is not listed for this shard in the index")
            where[n] = f
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(where))
        if missing:
            raise CheckpointError(f"{index}: tensors listed but absent from their shards: {missing[:5]}")
    return where

