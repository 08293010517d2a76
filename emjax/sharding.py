"""Logical axis names -> device mesh, for weights, activations and sweep axes.

A mesh has up to three axes: `data` (batch; also the sweep axis of vmapped sweeps), `fsdp`
(parameters sharded on their embedding axis, gathered per layer), `tensor` (heads, ffn and vocab
split across devices). The same jitted code runs on 1 CPU, 8 fake CPU devices in tests, one GPU,
or a pod slice: only the mesh changes.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from emjax.config import ModelConfig
from emjax.params import Weights, abstract_weights, logical_axes

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or None: replicated).
DEFAULT_RULES: dict[str, str | None] = {
    "layers": None, "norm": None, "embed": "fsdp", "q_heads": "tensor", "kv_heads": "tensor",
    "ffn": "tensor", "vocab": "tensor", "batch": "data", "sweep": "data",
}


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all) with axes data/fsdp/tensor.

    `shape` gives sizes for some axes; one axis may be -1 (the rest of the devices). Default: all
    devices on `fsdp`.
    """
    devices = list(devices if devices is not None else jax.devices())
    shape = dict(shape or {"fsdp": -1})
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; use {MESH_AXES}")
    sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {free}")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if len(devices) % fixed:
            raise ValueError(f"{len(devices)} devices do not divide into mesh {shape}")
        sizes[free[0]] = len(devices) // fixed
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, have {len(devices)}")
    grid = np.asarray(devices).reshape([sizes[a] for a in MESH_AXES])
    return Mesh(grid, MESH_AXES)


def spec_for(axes: tuple[str, ...], shape: tuple[int, ...], mesh: Mesh,
             rules: Mapping[str, str | None] = DEFAULT_RULES) -> P:
    """PartitionSpec for one array; a dim whose size the mesh axis does not divide is replicated,
    and a mesh axis is used at most once per array."""
    used, spec = set(), []
    for name, size in zip(axes, shape):
        m = rules.get(name)
        if m is None or m in used or mesh.shape[m] == 1 or size % mesh.shape[m]:
            spec.append(None)
        else:
            spec.append(m)
            used.add(m)
    return P(*spec)


def weight_shardings(cfg: ModelConfig, mesh: Mesh, rules: Mapping[str, str | None] = DEFAULT_RULES) -> Weights:
    """A `Weights` tree of NamedShardings for `cfg` on `mesh`."""
    axes, shapes = logical_axes(cfg), abstract_weights(cfg)
    is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, str) for a in x)
    return jax.tree.map(lambda a, s: NamedSharding(mesh, spec_for(a, s.shape, mesh, rules)),
                        axes, shapes, is_leaf=is_axes)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Shard the leading (batch) axis over `data` and `fsdp` (FSDP is data-parallel for activations)."""
    lead = tuple(a for a in ("data", "fsdp") if mesh.shape[a] > 1) or None
    return NamedSharding(mesh, P(lead, *([None] * (ndim - 1))))
