"""Logical axis names -> device mesh, for weights, batches and sweep axes.

A mesh has up to three axes: `data` (batch rows; also the sweep axis of vmapped sweeps), `fsdp`
(parameters sharded on their embedding axis, gathered per layer), `tensor` (heads, ffn and vocab
split across devices). The same jitted code runs on 1 CPU, 8 fake CPU devices in tests, one GPU,
or a pod slice: only the mesh changes.

Rules fail loudly: a rule naming a mesh axis the mesh lacks, an array that would use one mesh axis
twice, or a dimension the mesh axis does not divide raises `ShardingError` naming the array,
unless the rule is a `Rule(..., replicate_if_indivisible=True)`, which then replicates that
dimension (the sweep axis does: a sweep of 9 norms on 2 devices is legitimate).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from emjax.errors import EmjaxError
from emjax.model.config import ModelConfig
from emjax.model.schema import Weights, map_leaves

MESH_AXES = ("data", "fsdp", "tensor")


class ShardingError(EmjaxError, ValueError):
    """A mesh or sharding rule that cannot place an array as asked; names the array."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """Shard a logical axis over `mesh_axis`; with `replicate_if_indivisible`, replicate it instead
    where the mesh axis does not divide it or is already used by another dimension."""

    mesh_axis: str
    replicate_if_indivisible: bool = False


Rules = Mapping[str, Union[str, Rule, None]]

# Logical axis -> mesh axis (None: replicated).
DEFAULT_RULES: dict[str, str | Rule | None] = {
    "layers": None, "norm": None, "embed": "fsdp", "q_heads": "tensor", "kv_heads": "tensor",
    "ffn": "tensor", "vocab": "tensor", "batch": "data", "sweep": Rule("data", replicate_if_indivisible=True),
}


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all) with axes data/fsdp/tensor.

    `shape` gives sizes for some axes; one axis may be -1 (the rest of the devices). Default: all
    devices on `fsdp`.
    """
    devices = list(devices if devices is not None else jax.devices())
    sizes = mesh_sizes(shape or {"fsdp": -1}, len(devices))
    grid = np.asarray(devices).reshape([sizes[a] for a in MESH_AXES])
    return Mesh(grid, MESH_AXES)


def mesh_sizes(shape: Mapping[str, int], n_devices: int) -> dict[str, int]:
    """Every mesh axis's size for `n_devices` from sizes of some axes (one may be -1: the rest)."""
    shape = dict(shape)
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ShardingError(f"unknown mesh axes {sorted(unknown)}; use {MESH_AXES}")
    sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ShardingError(f"at most one mesh axis may be -1, got {free}")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if n_devices % fixed:
            raise ShardingError(f"{n_devices} devices do not divide into mesh {shape}")
        sizes[free[0]] = n_devices // fixed
    if math.prod(sizes.values()) != n_devices:
        raise ShardingError(f"mesh {sizes} needs {math.prod(sizes.values())} devices, have {n_devices}")
    return sizes


def mesh_text_shape(text: str) -> dict[str, int]:
    """"data:2,fsdp:4" -> {"data": 2, "fsdp": 4} (axes not checked here; see `mesh_sizes`)."""
    shape = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, size = item.partition(":")
        try:
            shape[name] = int(size)
        except ValueError:
            raise ShardingError(f"mesh entry {item!r} must be axis:size (axes {', '.join(MESH_AXES)})") from None
    return shape


def parse_mesh(text: str, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """"data:2,fsdp:4" (one axis may be -1) -> a device mesh over `devices` (default: all)."""
    shape = mesh_text_shape(text)
    try:
        return make_mesh(shape, devices)
    except ShardingError as e:
        raise ShardingError(f"mesh {text!r}: {e}") from None


def spec_for(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules = DEFAULT_RULES, *,
             name: str = "array") -> P:
    """The PartitionSpec of one array from the logical names of its dimensions (None: replicated).

    Raises ShardingError naming `name` for a logical axis without a rule, a rule naming a mesh
    axis the mesh lacks, a mesh axis used twice, or a dimension the mesh axis does not divide
    (the last two only where the rule does not allow replication).
    """
    used: dict[str, int] = {}
    spec: list[str | None] = []
    for dim, (logical, size) in enumerate(zip(axes, shape)):
        if logical is None:
            spec.append(None)
            continue
        if logical not in rules:
            raise ShardingError(f"{name}: no sharding rule for logical axis {logical!r} (rules: {sorted(rules)})")
        rule = rules[logical]
        if rule is None:
            spec.append(None)
            continue
        rule = Rule(rule) if isinstance(rule, str) else rule
        axis = rule.mesh_axis
        if axis not in mesh.shape:
            raise ShardingError(f"{name}: rule {logical!r} -> {axis!r} names no axis of the mesh "
                                f"{dict(mesh.shape)}")
        n = mesh.shape[axis]
        if axis in used or size % n:
            if rule.replicate_if_indivisible:
                spec.append(None)
                continue
            if axis in used:
                raise ShardingError(f"{name}: mesh axis {axis!r} would shard both dimension {used[axis]} "
                                    f"and dimension {dim} ({logical!r}) of shape {tuple(shape)}")
            raise ShardingError(f"{name}: dimension {dim} ({logical!r}, size {size}) of shape {tuple(shape)} "
                                f"is not divisible by mesh axis {axis!r} of size {n}")
        used[axis] = dim
        spec.append(axis if n > 1 else None)
    return P(*spec)


def weight_shardings(cfg: ModelConfig, mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Weights:
    """A `Weights` tree of NamedShardings for `cfg` on `mesh` (from the schema's logical axes)."""
    return map_leaves(cfg, lambda leaf, shape, axes: NamedSharding(
        mesh, spec_for(axes, shape, mesh, rules, name=f"weight {leaf.name} {tuple(shape)}")))


def batch_sharding(mesh: Mesh, shape: Sequence[int], batch_dim: int = 0, rules: Rules = DEFAULT_RULES,
                   name: str = "batch") -> NamedSharding:
    """Rows of dimension `batch_dim` on the "batch" rule's mesh axis, the rest replicated."""
    axes = [None] * len(shape)
    axes[batch_dim] = "batch"
    return NamedSharding(mesh, spec_for(axes, shape, mesh, rules, name=name))


def sweep_sharding(mesh: Mesh, shape: Sequence[int], rules: Rules = DEFAULT_RULES,
                   name: str = "sweep") -> NamedSharding:
    """The leading (sweep) dimension on the "sweep" rule's mesh axis, the rest replicated."""
    return NamedSharding(mesh, spec_for(["sweep"] + [None] * (len(shape) - 1), shape, mesh, rules, name=name))


def constrain_rows(x: jax.Array) -> jax.Array:
    """An activation [B, ...] with its rows on `data` of the mesh set by `jax.set_mesh` (called at
    block boundaries, so XLA does not guess their layout); unchanged without such a mesh or where
    `data` does not divide B."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or "data" not in mesh.axis_names:
        return x
    n = mesh.shape["data"]
    if n == 1 or x.shape[0] % n:
        return x
    return jax.lax.with_sharding_constraint(x, P("data"))
