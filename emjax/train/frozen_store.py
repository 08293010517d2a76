"""The frozen cache on disk: what the frozen model computed on rows, kept for later runs.

A rerun, a replicate or a sibling run (general and narrow on the same data) asks the frozen model
the same questions; the answers are kept under `train.frozen_cache_dir` (default
`<data.cache_dir>/frozen`), one entry per (model, dtype, layer k, with or without the base outputs):

    <root>/<model>-k<k>-<prefix|base>-<key>/
        meta.json              what the entry is (model name and source, dtype, k, fingerprint)
        <shard>.prefix.bin     [N_tokens, D] the residual entering layer k, rows back to back
        <shard>.base.bin       [N_tokens, D] the frozen final hidden states (entries with base)
        <shard>.index.npz      per row: token-id hash [16] uint8, length, offset, crc32 of its bytes

A shard holds the rows one run encoded; rows are named by a hash of their token ids, so a run whose
rows overlap an earlier run's reuses the overlap and encodes only the rest. The model is named by a
fingerprint of its weights (`model_fingerprint`), not by its path: another checkpoint, a fine-tune or
another random seed at the same path is another entry.

Writes are atomic: data files are written under temporary names, renamed, and the index is renamed
last (a shard without an index is ignored). A shard is named by the hash of its row set and its rows
are laid out in a canonical order, so two runs that encode the same rows at once write the same
files (last writer wins). Reading memory-maps the data and checks every file's size and the crc32 of
every row a run uses; a shard that fails is removed, said so, and its rows are encoded again.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import uuid
import zipfile
import zlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from emjax.model.config import ModelConfig
from emjax.model.schema import Weights

FORMAT = 1  # bump when the layout changes: older entries are then other keys, never misread


def row_hash(ids: np.ndarray) -> bytes:
    """16-byte name of a row of token ids [T] (blake2b of its int32 bytes)."""
    return hashlib.blake2b(np.asarray(ids, np.int32).tobytes(), digest_size=16).digest()


def _corner(leaf: jax.Array, per_layer: bool) -> np.ndarray:
    """leaf[:, :8, ..., :8] (per_layer: every layer) or leaf[:8, ..., :8], read from the device shards
    that hold the origin, so no sharded weight is gathered whole."""
    keep = 1 if per_layer else 0
    parts = {}
    for shard in leaf.addressable_shards:
        starts = [s.start or 0 for s in shard.index]
        if all(s == 0 for s in starts[keep:]):
            parts.setdefault(starts[0] if keep else 0, shard.data)
    sl = (slice(None),) * keep + (slice(0, 8),) * (leaf.ndim - keep)
    return np.concatenate([np.asarray(parts[k][sl]) for k in sorted(parts)]) if leaf.ndim else np.asarray(leaf)


def model_fingerprint(weights: Weights, cfg: ModelConfig) -> str:
    """A hash of the config and of the corner [:8, :8] of every weight (of every layer for the
    stacked ones): a few KB leave the device, and a real change of the weights (another checkpoint,
    a fine-tune, another random init) changes it. Single-process arrays only (all shards here)."""
    h = hashlib.sha256(repr(cfg).encode())
    with jax.set_mesh(None):  # the corners are sliced on their own devices, outside a run's mesh
        for path, leaf in jax.tree_util.tree_flatten_with_path(weights)[0]:
            name = jax.tree_util.keystr(path)
            h.update(f"{name} {leaf.dtype} {leaf.shape}".encode())
            h.update(_corner(leaf, name.startswith(".layers")).tobytes())
    return h.hexdigest()[:16]


class ShardError(Exception):
    """A shard on disk that cannot be used (truncated, resized, or failing its checksums)."""


def _storage(dtype: np.dtype) -> np.dtype:
    """The unsigned integer type of the same width, how the bytes are stored (bfloat16 has no
    portable numpy name)."""
    return np.dtype(f"u{np.dtype(dtype).itemsize}")


def row_crc(x: np.ndarray) -> int:
    """crc32 of the bytes of one row's activations [n, D] (contiguous)."""
    return zlib.crc32(np.ascontiguousarray(x).view(np.uint8))


class FrozenStore:
    """One entry of the disk cache (see the module docstring): `find` what it holds, `writer` to
    add a shard."""

    def __init__(self, root: str, *, model_name: str, model_source: str, fingerprint: str, dtype: str,
                 k: int, with_base: bool):
        self.meta = {"format": FORMAT, "model": model_name, "model_source": model_source,
                     "fingerprint": fingerprint, "dtype": dtype, "k": int(k), "with_base": bool(with_base)}
        key = hashlib.sha256(json.dumps({x: self.meta[x] for x in ("format", "fingerprint", "dtype", "k",
                                                                      "with_base")}, sort_keys=True).encode())
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)[:48]
        self.dir = os.path.join(root, f"{slug}-k{k}-{'base' if with_base else 'prefix'}-{key.hexdigest()[:12]}")
        self.with_base = bool(with_base)

    def path(self, shard: str, part: str) -> str:
        return os.path.join(self.dir, f"{shard}.{part}")

    def size_bytes(self) -> int:
        """Bytes of the entry's committed files (temporary ones of running writers excluded)."""
        total = 0
        for f in os.listdir(self.dir) if os.path.isdir(self.dir) else ():
            try:
                total += 0 if f.endswith(".tmp") else os.path.getsize(os.path.join(self.dir, f))
            except FileNotFoundError:  # removed by another run meanwhile
                pass
        return total

    def shards(self) -> list[str]:
        """Names of the committed shards (those with an index)."""
        if not os.path.isdir(self.dir):
            return []
        return sorted(f[: -len(".index.npz")] for f in os.listdir(self.dir) if f.endswith(".index.npz"))

    # -- reading -----------------------------------------------------------------------------
    def _open(self, shard: str) -> tuple[dict, np.ndarray, np.ndarray | None]:
        """(index arrays, prefix [N_tok, D], base or None) of a shard, memory-mapped; ShardError when
        a file is missing or of the wrong size."""
        try:
            with np.load(self.path(shard, "index.npz")) as z:
                index = {k: z[k] for k in z.files}
            dtype = np.dtype(jnp.dtype(str(index["dtype"])))  # jnp knows bfloat16
            shape = (int(index["n_tokens"]), int(index["d_model"]))
            arrays = []
            for part in ("prefix", "base")[: 2 if self.with_base else 1]:
                path = self.path(shard, f"{part}.bin")
                want = shape[0] * shape[1] * dtype.itemsize
                got = os.path.getsize(path)
                if got != want:
                    raise ShardError(f"{path} has {got} bytes, its index says {want} (truncated or overwritten)")
                arrays.append(np.memmap(path, _storage(dtype), "r", shape=shape).view(dtype) if want else
                              np.zeros(shape, dtype))
        except ShardError:
            raise
        except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise ShardError(f"{self.path(shard, 'index.npz')}: unreadable ({type(e).__name__}: {e})") from None
        return index, arrays[0], arrays[1] if self.with_base else None

    def find(self, wanted: set[bytes], workers: int | None = None
             ) -> tuple[dict[bytes, tuple[np.ndarray, np.ndarray | None]], list[str]]:
        """The rows of `wanted` (row hashes) that the entry holds, as {hash: (prefix [n, D], base
        [n, D] or None)} memory-mapped views, checked against their crc32; and notes on shards that
        failed (removed, so their rows are encoded again)."""
        found: dict[bytes, tuple[np.ndarray, np.ndarray | None]] = {}
        notes = []
        for shard in self.shards():
            try:
                index, prefix, base = self._open(shard)
                hashes = [bytes(h) for h in index["hashes"]]
                take = [j for j, h in enumerate(hashes) if h in wanted and h not in found]
                if not take:
                    continue
                off, n, crc = index["offsets"], index["lengths"], index["crc"]
                views = {j: (prefix[off[j]: off[j] + n[j]], base[off[j]: off[j] + n[j]] if base is not None else None)
                         for j in take}
                bad = _failing_rows(views, crc, workers)
                if bad:
                    raise ShardError(f"{self.path(shard, 'prefix.bin')}: {len(bad)} of {len(take)} rows fail "
                                     "their crc32 (the file was changed on disk)")
            except ShardError as e:
                self.remove(shard)
                notes.append(f"frozen cache: {e}; removed, its rows are encoded again")
                continue
            found.update({hashes[j]: views[j] for j in take})
        return found, notes

    def remove(self, shard: str) -> None:
        """Deletes a shard (index first, so no reader sees half of it); a concurrent reader keeps
        its open maps."""
        for part in ("index.npz", "prefix.bin", "base.bin"):
            try:
                os.remove(self.path(shard, part))
            except FileNotFoundError:
                pass

    # -- writing -----------------------------------------------------------------------------
    def writer(self, hashes: Sequence[bytes], lengths: Sequence[int]) -> "ShardWriter":
        return ShardWriter(self, hashes, lengths)


def _failing_rows(views: dict[int, tuple[np.ndarray, np.ndarray | None]], crc: np.ndarray,
                  workers: int | None) -> list[int]:
    """Rows j of `views` whose bytes do not match crc[j] ([N, 1 or 2] uint32), checked on threads
    (crc32 releases the GIL)."""
    def check(j):
        p, b = views[j]
        got = [row_crc(p)] + ([row_crc(b)] if b is not None else [])
        return j if got != [int(c) for c in crc[j]] else None

    with concurrent.futures.ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        return [j for j in pool.map(check, views) if j is not None]


class ShardWriter:
    """Writes one shard: `write(s, e, prefix, base)` is called with the rows s..e-1 in order (the
    layout order of `hashes`), on a background thread (file writes and crc32 release the GIL, so
    the caller keeps the device busy); `commit()` renames the files into place and returns a note.
    A failed write (disk full, no permission) disables the shard: the run goes on from memory."""

    def __init__(self, store: FrozenStore, hashes: Sequence[bytes], lengths: Sequence[int]):
        self.store = store
        self.hashes = list(hashes)
        self.lengths = np.asarray(lengths, np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.name = hashlib.sha256(b"".join(sorted(self.hashes))).hexdigest()[:16]
        self.crc = np.zeros((len(self.hashes), 2 if store.with_base else 1), np.uint32)
        self.error: Exception | None = None
        self.dtype: np.dtype | None = None
        self.bytes = 0
        self._tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        self._files: list = []
        self._pool = concurrent.futures.ThreadPoolExecutor(1)
        self._jobs: list[concurrent.futures.Future] = []
        try:
            os.makedirs(store.dir, exist_ok=True)
            parts = ("prefix", "base")[: 2 if store.with_base else 1]
            self._files = [open(store.path(self.name, f"{p}.bin.{self._tag}"), "wb") for p in parts]
        except OSError as e:
            self.error = e

    def write(self, s: int, e: int, prefix: np.ndarray, base: np.ndarray | None) -> None:
        """Queues rows s..e-1: prefix / base [sum of their lengths, D]."""
        if self.error is None:
            self._jobs.append(self._pool.submit(self._write, s, e, prefix, base))

    def _write(self, s: int, e: int, prefix: np.ndarray, base: np.ndarray | None) -> None:
        if self.error is not None:
            return
        try:
            self.dtype = prefix.dtype
            for f, chunk in zip(self._files, (prefix, base)):
                f.write(np.ascontiguousarray(chunk).view(np.uint8).data)
                self.bytes += chunk.nbytes
            for i in range(s, e):
                a, b = self.offsets[i] - self.offsets[s], self.offsets[i + 1] - self.offsets[s]
                self.crc[i, 0] = row_crc(prefix[a:b])
                if base is not None:
                    self.crc[i, 1] = row_crc(base[a:b])
        except OSError as err:
            self.error = err

    def commit(self, d_model: int) -> str:
        """Waits for the writes, moves the shard into place; a note on what was written."""
        for job in self._jobs:
            job.result()
        self._pool.shutdown()
        for f in self._files:
            f.close()
        st = self.store
        parts = ("prefix", "base")[: len(self._files)]
        try:
            if self.error is not None:
                raise self.error
            dtype = self.dtype if self.dtype is not None else np.dtype(np.float32)
            for p in parts:
                os.replace(st.path(self.name, f"{p}.bin.{self._tag}"), st.path(self.name, f"{p}.bin"))
            tmp = st.path(self.name, f"index.npz.{self._tag}")  # np.savez to a file object adds no suffix
            with open(tmp, "wb") as f:
                np.savez(f, hashes=np.frombuffer(b"".join(self.hashes), np.uint8).reshape(-1, 16),
                         lengths=self.lengths, offsets=self.offsets[:-1], crc=self.crc, dtype=np.str_(dtype.name),
                         n_tokens=np.int64(self.offsets[-1]), d_model=np.int64(d_model))
            meta = os.path.join(st.dir, "meta.json")
            if not os.path.exists(meta):
                with open(meta + "." + self._tag, "w") as f:
                    json.dump(st.meta, f, indent=1)
                os.replace(meta + "." + self._tag, meta)
            os.replace(tmp, st.path(self.name, "index.npz"))  # last: the shard now exists
        except OSError as e:
            self._discard()
            return f"not kept on disk ({type(e).__name__}: {e})"
        return f"{self.bytes / 2**20:.1f} MiB written"

    def _discard(self) -> None:
        """Removes this writer's temporary files."""
        for f in os.listdir(self.store.dir) if os.path.isdir(self.store.dir) else ():
            if f.endswith(self._tag):
                try:
                    os.remove(os.path.join(self.store.dir, f))
                except FileNotFoundError:
                    pass
