"""Which mesh a stage runs on, and putting weights and rows on it.

Every stage takes one mesh option (`--mesh data:2,fsdp:4`, a config key `mesh`, or `auto`) and
the same rules (`emjax.model.sharding`). `auto` chooses by memory, not habit: the frozen weights get
no gradient, so when they fit on one device the best plan is data parallel (weights replicated,
rows split, only the intervention's gradient all-reduced); FSDP only when they do not fit, over
as few devices as make them fit (within one host where it can), with `data` over the rest.

    plan = plan_mesh("auto", cfg, jnp.bfloat16)      # MeshPlan; print(plan.describe())
    weights = place_weights(weights, cfg, plan.mesh)
    tokens = put_rows(np_tokens, plan.mesh)           # rows on `data` where they divide

Arrays are placed with `jax.make_array_from_callback`, so the same code makes a global array
across hosts: each process supplies only its own devices' slices (every process must hold the
same host values, which emjax's seeded data order guarantees).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from emjax.model.config import ModelConfig
from emjax.model.schema import Weights, num_params
from emjax.model.sharding import (MESH_AXES, ShardingError, make_mesh, mesh_sizes, mesh_text_shape, parse_mesh,
                                  weight_shardings)

AUTO = "auto"
# ours: replicate the frozen weights when they take at most this share of one device's memory; the
# rest holds activations, the KV cache or frozen cache and the optimiser state (Qwen2.5-14B in bf16
# is 29.5 GB: replicated on an 80 GB card, split over 2 on a 40 GB one)
WEIGHT_SHARE = 0.5


@dataclasses.dataclass(frozen=True)
class MeshPlan:
    """A stage's mesh (None: one device, nothing placed) and why it was chosen."""

    mesh: Mesh | None
    reason: str

    @property
    def shape(self) -> dict[str, int]:
        return dict(self.mesh.shape) if self.mesh is not None else {a: 1 for a in MESH_AXES}

    def describe(self) -> str:
        s = self.shape
        return f"mesh data:{s['data']},fsdp:{s['fsdp']},tensor:{s['tensor']} ({self.reason})"


def weight_bytes(cfg: ModelConfig, dtype) -> int:
    """Bytes of the frozen weights of `cfg` in `dtype` (unsharded)."""
    return num_params(cfg) * jnp.dtype(dtype).itemsize


def device_memory(device: jax.Device) -> int | None:
    """Bytes one device can hold, where the backend reports it (GPU, TPU); None on CPU."""
    try:
        stats = device.memory_stats() or {}
    except Exception:  # some backends raise rather than return None
        return None
    return stats.get("bytes_limit")


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def auto_shape(n: int, per_host: int, weights: int, memory: int | None, weight_share: float = WEIGHT_SHARE
               ) -> tuple[dict[str, int], str]:
    """`auto`'s mesh shape for n devices (per_host on each host) of `memory` bytes (None: unknown,
    as on CPU) and weights of `weights` bytes, with the reason.

    data:n when weights <= weight_share * memory (or memory is unknown); else fsdp:f, data:n/f for
    the smallest f dividing n with weights / f <= weight_share * memory, preferring an f that
    divides per_host (the weight gathers then stay on one host's fast links). Raises
    ShardingError when even f = n does not fit.
    """
    if memory is None or weights <= weight_share * memory:
        room = "memory not reported" if memory is None else f"<= {weight_share:g} x {_gb(memory)} per device"
        return {"data": n}, (f"auto: weights {_gb(weights)} {room}: replicated, rows (or a sweep's versions) "
                             f"split over {n} devices; training all-reduces only the intervention's gradient")
    fits = [f for f in range(2, n + 1) if n % f == 0 and weights / f <= weight_share * memory]
    if not fits:
        raise ShardingError(f"weights of {_gb(weights)} do not fit {n} devices of {_gb(memory)} even fully "
                            f"sharded ({_gb(weights / n)} each > {weight_share:g} x {_gb(memory)}); use more "
                            "devices or bfloat16")
    f = min([f for f in fits if per_host % f == 0] or fits)
    return {"data": n // f, "fsdp": f}, (f"auto: weights {_gb(weights)} > {weight_share:g} x {_gb(memory)} per "
                                         f"device: sharded over fsdp:{f} ({_gb(weights / f)} each), rows (or a "
                                         f"sweep's versions) split over data:{n // f}")


def plan_mesh(spec: str | None, cfg: ModelConfig, dtype, devices: Sequence[jax.Device] | None = None, *,
              memory_per_device: int | None = None, weight_share: float = WEIGHT_SHARE) -> MeshPlan:
    """The mesh `spec` asks for: None or "" (one device), "data:2,fsdp:4" (explicit), or "auto"
    (`auto_shape` from the weights of `cfg` in `dtype`, the devices and their memory).

    memory_per_device: default what the first device reports (None on CPU: data parallel).
    """
    devices = list(devices if devices is not None else jax.devices())
    if not spec:
        return MeshPlan(None, "one device")
    if spec != AUTO:
        return MeshPlan(parse_mesh(spec, devices), "as asked")
    w = weight_bytes(cfg, dtype)
    if len(devices) == 1:
        return MeshPlan(None, f"auto: one device, weights {_gb(w)}")
    mem = memory_per_device if memory_per_device is not None else device_memory(devices[0])
    per_host = sum(d.process_index == devices[0].process_index for d in devices)
    shape, reason = auto_shape(len(devices), per_host, w, mem, weight_share)
    return MeshPlan(make_mesh(shape, devices), reason)


def check_mesh_spec(spec: str | None, n_devices: int | None = None) -> None:
    """A mesh option checked without building anything: None, "" and "auto" pass; "axis:size,..."
    must name axes of MESH_AXES with integer sizes >= 1 (one may be -1) and, with `n_devices`, use
    exactly that many devices. ShardingError naming the spec otherwise."""
    if not spec or spec == AUTO:
        return
    shape = mesh_text_shape(spec)
    bad = [f"{a}:{n}" for a, n in shape.items() if n < 1 and n != -1]
    if bad:
        raise ShardingError(f"mesh {spec!r}: sizes must be >= 1 (or -1: the rest of the devices), got {', '.join(bad)}")
    try:
        mesh_sizes(shape, n_devices if n_devices is not None else _sizes_only(shape))
    except ShardingError as e:
        raise ShardingError(f"mesh {spec!r}: {e}") from None


def _sizes_only(shape: dict[str, int]) -> int:
    """A device count that the fixed sizes of `shape` fill (so only axis names and sizes are checked)."""
    n = 1
    for size in shape.values():
        n *= size if size > 0 else 1
    return n


def global_array(host: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
    """A (possibly multi-host) array with `sharding` from a host array every process holds."""
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def place_weights(weights: Weights, cfg: ModelConfig, mesh: Mesh | None) -> Weights:
    """`weights` on `mesh` by their logical axes (unchanged without a mesh). Single-host: across
    hosts, load straight into the shards (`emjax.checkpoints.load.load_model(..., shardings=)`)."""
    if mesh is None:
        return weights
    return jax.device_put(weights, weight_shardings(cfg, mesh))


def mesh_of(tree) -> Mesh | None:
    """The mesh the first leaf of `tree` is placed on, when it spans more than one device."""
    leaf = jax.tree.leaves(tree)[0]
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
        return sharding.mesh
    return None


def rows_divide(mesh: Mesh | None, rows: int) -> bool:
    """Whether `rows` split evenly over the mesh's `data` axis (and there is one to split over)."""
    return mesh is not None and mesh.shape["data"] > 1 and rows % mesh.shape["data"] == 0


def row_sharding(mesh: Mesh, ndim: int, dim: int = 0, split: bool = True) -> NamedSharding:
    """Dimension `dim` on `data` (with `split`), the rest replicated."""
    spec = [None] * ndim
    if split:
        spec[dim] = "data"
    return NamedSharding(mesh, P(*spec))


def put_rows(x, mesh: Mesh | None, dim: int = 0):
    """Host array(s) -> device arrays with dimension `dim` on `data` where it divides (replicated
    where not); plain `jnp.asarray` without a mesh. `x` may be a pytree."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, x)

    def one(a):
        a = np.asarray(a)
        return global_array(a, row_sharding(mesh, a.ndim, dim, rows_divide(mesh, a.shape[dim])))
    return jax.tree.map(one, x)


def replicate(x, mesh: Mesh | None):
    """Host or device pytree -> replicated on every device of `mesh` (unchanged without one)."""
    if mesh is None:
        return x

    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return a  # already a global array
        return global_array(np.asarray(a), NamedSharding(mesh, P()))
    return jax.tree.map(one, x)


def mesh_context(mesh: Mesh | None):
    """`jax.set_mesh(mesh)` (activations then get their row constraints,
    `emjax.model.sharding.constrain_rows`), or nothing without a mesh."""
    return jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()


def join_hosts_from_env() -> bool:
    """Joins the processes of a multi-host run before anything touches a device; returns whether
    it did. EMJAX_DISTRIBUTED=1: `jax.distributed.initialize()` finds SLURM, Open MPI and TPU pods
    itself; EMJAX_COORDINATOR=host:port with EMJAX_NUM_PROCESSES and EMJAX_PROCESS_ID: an explicit
    group (launch/local_multiprocess.sh; on CPU the collectives go through gloo)."""
    env = os.environ
    if env.get("EMJAX_COORDINATOR"):
        if env.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=env["EMJAX_COORDINATOR"],
                                   num_processes=int(env["EMJAX_NUM_PROCESSES"]),
                                   process_id=int(env["EMJAX_PROCESS_ID"]))
        return True
    if env.get("EMJAX_DISTRIBUTED") == "1":
        jax.distributed.initialize()
        return True
    return False


def is_writer() -> bool:
    """Whether this process writes tables, plots, JSONL and logs: process 0 of a multi-host run
    (the only process otherwise)."""
    return jax.process_index() == 0


def fetch(tree):
    """Device pytree -> numpy on every process: a local copy of replicated arrays, an all-gather of
    arrays split across hosts (`jax.experimental.multihost_utils.process_allgather`)."""
    def one(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return np.asarray(a)
        if a.is_fully_replicated:
            return np.asarray(a.addressable_data(0))
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return jax.tree.map(one, tree)
