"""`emjax launch-plan`: what a launch on a pod or cluster would run, before it runs.

    emjax launch-plan --launcher tpu --hosts 16 --devices-per-host 4 --memory-gb 95 \\
        --model-preset qwen2.5-14b-instruct -- emjax sweep efficiency --config=configs/sweep_paper.py:steering,medical

prints the mesh the stage would get (`emjax.model.mesh_plan`: `--mesh auto` unless the stage or its
config names one), the per-device memory estimate (the full training estimate of
`emjax.train.memory` for `emjax train`; the weights' share per device for the other stages), and
the command each host runs under the launcher: `local` (N processes on this machine joined over
localhost), `slurm` (one task per node), `tpu` (every worker of a TPU VM slice). The scripts in
`launch/` call this with DRY_RUN=1 and start the same commands otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from emjax.configuration import load_config, split_cli_overrides
from emjax.errors import EmjaxError
from emjax.interventions import shared_prefix_layers
from emjax.model.config import ModelConfig, dtype_from_name, preset
from emjax.model.mesh_plan import AUTO, auto_shape, weight_bytes
from emjax.model.sharding import MESH_AXES, ShardingError, mesh_sizes, mesh_text_shape
from emjax.train.inputs import build_intervention, rows_over_data, uses_kl
from emjax.train.preflight import TRAIN_RULES
from emjax.train.memory import MemoryPlan, estimate_training_memory, weight_bytes_per_device

LAUNCHERS = ("local", "slurm", "tpu")
GB = 1e9


class LaunchError(EmjaxError, ValueError):
    """A launch that cannot be planned as asked; names the option."""


@dataclasses.dataclass
class LaunchPlan:
    """A stage's launch: the devices, the mesh and why, the memory per device, each host's command."""

    launcher: str
    hosts: int
    devices_per_host: int
    mesh: dict[str, int]
    reason: str
    memory: str
    commands: list[str]

    def describe(self) -> str:
        n = self.hosts * self.devices_per_host
        lines = [f"launcher: {self.launcher}, {self.hosts} hosts x {self.devices_per_host} devices = {n}",
                 "mesh: " + ",".join(f"{a}:{self.mesh[a]}" for a in MESH_AXES) + f" ({self.reason})",
                 self.memory, "commands:"]
        return "\n".join(lines + [f"  {c}" for c in self.commands])


def _option(argv: Sequence[str], name: str) -> str | None:
    """The value of `--name=V` or `--name V` in argv (last one wins)."""
    value = None
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(name + "="):
            value = a.split("=", 1)[1]
    return value


def _model_config(c: ml_collections.ConfigDict | None, model_preset: str | None, argv: Sequence[str]) -> ModelConfig:
    if model_preset:
        return preset(model_preset)
    source = _option(argv, "--model") or (c.model.source if c is not None else "embedded")
    if source == "embedded":
        return preset("qwen2.5-coder-0.5b-instruct-gguf")
    if os.path.isdir(source):
        return ModelConfig.from_hf(source)
    raise LaunchError(f"model {source!r} is not a folder on this machine: name its shapes with --model-preset "
                      f"(e.g. qwen2.5-14b-instruct)")


def _mesh_shape(spec: str, n: int, per_host: int, weights: int, memory: int | None) -> tuple[dict[str, int], str]:
    if spec == AUTO:
        shape, reason = auto_shape(n, per_host, weights, memory)
        return mesh_sizes(shape, n), reason
    shape = mesh_text_shape(spec)
    if -1 not in shape.values() and math.prod(shape.values()) != n:
        raise LaunchError(f"mesh {spec!r} needs {math.prod(shape.values())} devices; the launch has {n}")
    return mesh_sizes(shape, n), "as asked"


def _train_memory(c: ml_collections.ConfigDict, cfg: ModelConfig, sizes: tuple[int, int, int]) -> str:
    # A run that continues a trained intervention (init_from, e.g. KL removal) is planned from the
    # config's description: training refuses a start file whose shapes differ from it
    # (emjax.train.inputs._load_start), and the file need not exist yet where the launch is planned.
    fresh = c.intervention.copy_and_resolve_references()
    fresh.init_from = None
    params = jax.eval_shape(lambda: build_intervention(fresh, cfg))
    tc = c.train
    k = shared_prefix_layers(params, cfg)
    kl = uses_kl(c)
    plan = MemoryPlan(batch_size=tc.batch_size, seq_len=c.data.max_len, kl_batch_size=tc.kl_batch_size,
                      kl_seq_len=c.data.max_len if kl else None, grad_accum=tc.grad_accum, remat=tc.remat,
                      loss_chunk=tc.loss_chunk, dtype=c.model.dtype, first_layer=k, kl=kl,
                      cached_prefix=bool(tc.frozen_cache) and k > 0, cached_kl=bool(tc.frozen_cache) and kl,
                      mesh=sizes)
    return estimate_training_memory(cfg, params, plan).table() + "\n  (rows at data.max_len: an upper bound)"


def _commands(launcher: str, hosts: int, devices_per_host: int, stage: list[str]) -> list[str]:
    cmd = shlex.join(stage)
    if launcher == "local":
        return [f"EMJAX_COORDINATOR=localhost:PORT EMJAX_NUM_PROCESSES={hosts} EMJAX_PROCESS_ID={i} "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={devices_per_host} {cmd}" for i in range(hosts)]
    if launcher == "slurm":
        return [f"srun --nodes={hosts} --ntasks-per-node=1 --gpus-per-node={devices_per_host} ..., then on each:"] + \
            [f"node {i} (SLURM_PROCID={i}): EMJAX_DISTRIBUTED=1 {cmd}" for i in range(hosts)]
    return [f"gcloud compute tpus tpu-vm ssh $TPU --zone $ZONE --worker=all --command "
            f"{shlex.quote('cd ~/emjax && EMJAX_DISTRIBUTED=1 .venv/bin/' + cmd)}, i.e. on each:"] + \
        [f"worker {i}: cd ~/emjax && EMJAX_DISTRIBUTED=1 .venv/bin/{cmd}" for i in range(hosts)]


# The emjax commands that take --mesh (the others run on one host, or on no accelerator at all).
MESH_STAGES = ("train", "sweep", "generate", "judge", "experiment")


def plan_launch(stage: Sequence[str], launcher: str, hosts: int, devices_per_host: int,
                memory_gb: float | None = None, model_preset: str | None = None) -> LaunchPlan:
    """The plan of `stage` ("emjax train --config=... ...") under `launcher` on hosts x devices."""
    if launcher not in LAUNCHERS:
        raise LaunchError(f"--launcher must be one of {LAUNCHERS}, got {launcher!r}")
    if hosts < 1 or devices_per_host < 1:
        raise LaunchError("--hosts and --devices-per-host must be >= 1")
    stage = list(stage)
    if len(stage) < 2 or stage[0] != "emjax":
        raise LaunchError(f"the stage must be an emjax command after --, e.g. -- emjax train --config=X; got {stage}")
    if stage[1] not in MESH_STAGES:
        raise LaunchError(f"emjax {stage[1]} is not a stage that runs on a mesh of devices; one of "
                          f"{', '.join(MESH_STAGES)}")
    rest, overrides = split_cli_overrides(stage)
    path = _option(rest, "--config")
    # a training stage's config is checked against its allowed values (a sweep's by the sweep itself)
    rules = TRAIN_RULES if stage[1] in ("train", "experiment") else None
    c = load_config(path, overrides, rules=rules) if path else None
    cfg = _model_config(c, model_preset, rest)
    dtype = dtype_from_name(_option(rest, "--dtype") or (c.model.dtype if c is not None else "bfloat16"))
    spec = _option(rest, "--mesh") or (c.get("mesh") if c is not None else None) or AUTO
    n = hosts * devices_per_host
    # vmapped steering runs (emjax.train.vmapped) train on one device and refuse any mesh
    vmapped = stage[1] == "train" and c is not None and (
        any(a == "--vmap-runs" or a.startswith("--vmap-runs=") for a in rest) or c.get("vmap_runs") is not None)
    if vmapped and (n != 1 or spec != AUTO):
        raise LaunchError(f"vmapped runs (the config's vmap_runs or --vmap-runs) train on one device without a mesh; "
                          f"this launch has {n} devices{'' if spec == AUTO else f' and mesh {spec!r}'}: plan it with "
                          "--hosts 1 --devices-per-host 1 and no mesh")
    if _option(rest, "--mesh") is None and not vmapped:
        stage = stage + ["--mesh", spec]  # every host runs the plan printed here
    memory = int(memory_gb * GB) if memory_gb else None
    try:
        shape, reason = _mesh_shape(spec, n, devices_per_host, weight_bytes(cfg, dtype), memory)
        sizes = tuple(shape[a] for a in MESH_AXES)
        if stage[1] in ("train", "experiment") and c is not None:  # an experiment trains its config's runs
            mem = _train_memory(c, cfg, sizes)
            problem = rows_over_data(c, shape["data"])
            if problem:
                mem += f"\nwarning: {problem}"
            if vmapped:
                mem += "\n  (one run's estimate: the vmapped runs share the weights and the cache, each adds its own activations)"
        else:
            w = weight_bytes_per_device(cfg, jnp.dtype(dtype).itemsize, shape)
            mem = (f"memory per device (estimate): frozen weights {w / GB:.2f} GB of {weight_bytes(cfg, dtype) / GB:.2f}"
                   " GB (activations, KV cache and sweep chunks come on top; `emjax generate` checks its decode "
                   "buffers itself)")
    except ShardingError as e:
        raise LaunchError(str(e)) from None
    if memory:
        mem += f"\n  device memory {memory / GB:.0f} GB"
    return LaunchPlan(launcher, hosts, devices_per_host, shape, reason, mem,
                      _commands(launcher, hosts, devices_per_host, stage))


USAGE = "emjax launch-plan --launcher L --hosts N --devices-per-host D [options] -- emjax STAGE ..."


def build_parser() -> argparse.ArgumentParser:
    from emjax.arg_types import OneLineParser, float_in, positive_int
    p = OneLineParser(prog="emjax launch-plan", usage=USAGE, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--launcher", required=True, choices=LAUNCHERS)
    p.add_argument("--hosts", type=positive_int, required=True)
    p.add_argument("--devices-per-host", type=positive_int, required=True)
    p.add_argument("--memory-gb", type=float_in(0.0, low_open=True), default=None,
                   help="memory of one device (GB); decides --mesh auto")
    p.add_argument("--model-preset", default=None, help="model shapes when the model folder is not on this machine")
    return p


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    p = build_parser()
    if "--" not in argv:
        if "-h" in argv or "--help" in argv:
            p.print_help()
            return 0
        raise LaunchError(f"no stage to plan: usage: {USAGE} (emjax launch-plan --help)")
    cut = argv.index("--")
    args = p.parse_args(argv[:cut])
    print(plan_launch(argv[cut + 1:], args.launcher, args.hosts, args.devices_per_host, args.memory_gb,
                      args.model_preset).describe())
    return 0
