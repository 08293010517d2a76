"""Many steering-vector runs of one config in one compiled step (`emjax train --vmap-runs ...`).

    runs = expand_runs(config, {"lambda_kl": (0.0, 1.0, 10.0), "seed": (0, 1)})   # 6 runs
    out = VmappedTrainer(config, runs).run()

A sweep maps axes (`seed`, `lambda_kl`, `lr`) to values; its runs are the product of the axes, and
each run is the config a separate `Trainer` would train (the seed as `--seeds` sets it:
`emjax.train.replicates.replicate_config`). A steering vector is a few thousand numbers, so N of
them train together: the intervention and the optimiser state are stacked on a leading [N] axis
and the step is `jax.vmap` of the Trainer's own step over (state, lambda, lr). The frozen weights,
the frozen-model cache and every computation that does not depend on the vectors (the frozen
prefix, the KL base logits, the block below the hook) are shared, run once and not N times.

Per-run learning rate: the Trainer's optimiser (`make_optimizer`) is built inside the vmapped
function with the run's peak lr as a traced scalar, so schedule, weight decay, clipping and the
skipping of non-finite steps are those of a separate run, each run on its own (one run's NaN
skips only that run's step).

Data: runs that share a seed share its batches (vmapped with in_axes None); with several seeds
each seed's batches are right-padded to one width and gathered to [N, A, b, T, ...]. A run with
lambda 0 beside runs with lambda > 0 takes the KL pass with weight 0: the same gradient as a
separate run without it, unless that KL pass is itself non-finite (its step is then skipped).

Outputs: `<output_dir>/<label>/` per run (label e.g. `lambda_kl10_seed1`) with what a separate run
writes (metrics.jsonl, steering.safetensors, snapshots/, summary.json plus `vmapped_runs: N`);
the checkpoints are the stacked state in `<output_dir>/checkpoints/` (a rerun resumes from it),
and `<output_dir>/vmapped_runs.json` holds every summary. Steering interventions only, on one
device (no `mesh`): LoRA runs are refused.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import itertools
import json
import math
import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from emjax.checkpoints.load import LoadedModel
from emjax.model.config import ModelConfig
from emjax.model.layers import NO_DOT_MERGER
from emjax.train import step as TS
from emjax.train.inputs import TrainConfigError
from emjax.train.loop import Runs, run_state, train_runs  # noqa: F401 (run_state: run i of a stacked state)
from emjax.train.replicates import replicate_config
from emjax.train.run_record import finished_summary
from emjax.train.trainer import Trainer

AXES = ("seed", "lambda_kl", "lr")
Sweep = dict[str, tuple]  # axis name -> values (strings from the command line, numbers from a config)


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: its folder label and the whole config a separate Trainer would train."""

    label: str
    config: ml_collections.ConfigDict

    def describe(self) -> dict[str, Any]:
        tc = self.config.train
        return {"label": self.label, "seed": int(tc.seed), "lambda_kl": float(tc.lambda_kl), "lr": float(tc.lr)}


# -- the sweep --------------------------------------------------------------------------------

def parse_vmap_runs(words: Sequence[str]) -> Sweep:
    """The command line's `--vmap-runs lambda_kl=0,1,10 seed=0,1` words -> {axis: value strings}."""
    sweep = {}
    for word in words:
        key, sep, values = word.partition("=")
        key = key.strip()
        if not sep:
            raise TrainConfigError(f"--vmap-runs {word!r}: write KEY=V1,V2,... with KEY one of {', '.join(AXES)}")
        _check_axis(key, "--vmap-runs")
        if key in sweep:
            raise TrainConfigError(f"--vmap-runs: key {key!r} given twice (list its values once: {key}=V1,V2,...)")
        sweep[key] = tuple(v.strip() for v in values.split(",") if v.strip())
    return sweep


def sweep_of(config: ml_collections.ConfigDict, words: Sequence[str] | None) -> tuple[Sweep, str] | None:
    """(the sweep to train, where it was given): the `--vmap-runs` words when given, else the config's
    `vmap_runs` section ({axis: values}); None when neither."""
    if words:
        return parse_vmap_runs(words), "--vmap-runs"
    node = config.get("vmap_runs")
    if node is None:
        return None
    if not isinstance(node, (ml_collections.ConfigDict, dict)):
        raise TrainConfigError(f"vmap_runs must be a section {{axis: values}} with axes {', '.join(AXES)}, "
                               f"got {node!r}")
    return {k: tuple(v) if isinstance(v, (tuple, list)) else (v,) for k, v in node.items()}, "vmap_runs"


def _check_axis(key: str, where: str) -> None:
    if key not in AXES:
        close = difflib.get_close_matches(key, AXES, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TrainConfigError(f"{where}: unknown key {key!r}{hint} (vmapped runs differ in {', '.join(AXES)})")


def _values(key: str, raw: tuple, where: str) -> tuple:
    """The axis' values as numbers, checked; errors name the key."""
    if not raw:
        raise TrainConfigError(f"{where}: {key} has no values (write {key}=V1,V2,...)")
    out = []
    for v in raw:
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise TrainConfigError(f"{where}: {key} value {v!r} is not a number") from None
        if key == "seed":
            if not x.is_integer() or x < 0:
                raise TrainConfigError(f"{where}: seed value {v!r} is not a non-negative integer")
            x = int(x)
        elif not math.isfinite(x) or x < 0 or (key == "lr" and x == 0):
            raise TrainConfigError(f"{where}: {key} value {v!r} must be finite and {'> 0' if key == 'lr' else '>= 0'}")
        out.append(x)
    if len(set(out)) < len(out):
        raise TrainConfigError(f"{where}: {key} lists a value twice ({', '.join(map(str, raw))}): "
                               "two runs would write one folder")
    return tuple(out)


def _label_value(x: float | int) -> str:
    s = f"{x:g}"
    return s if float(s) == x else repr(float(x))  # short, unless that would merge two values


def expand_runs(config: ml_collections.ConfigDict, sweep: Sweep, where: str = "--vmap-runs") -> list[Run]:
    """The runs of `sweep` over `config`: the product of its axes, in the order given. Refuses
    what vmapped runs do not support (LoRA, a mesh), naming the key."""
    if config.intervention.kind != "steering":
        raise TrainConfigError(f"{where}: vmapped runs train steering vectors only; intervention.kind is "
                               f"{config.intervention.kind!r} (train LoRA runs one by one, or with --seeds)")
    if config.mesh:
        raise TrainConfigError(f"{where}: vmapped runs are single-device; mesh is {config.mesh!r} (set it to None)")
    if not sweep:
        raise TrainConfigError(f"{where}: no axes given (e.g. lambda_kl=0,1,10 or seed=0,1,2)")
    for key in sweep:
        _check_axis(key, where)
    axes = {k: _values(k, tuple(v), where) for k, v in sweep.items()}
    runs = []
    for combo in itertools.product(*axes.values()):
        c = copy.deepcopy(config)
        values = dict(zip(axes, combo))
        if "seed" in values:
            c = replicate_config(c, values["seed"])  # data order and init, as --seeds sets them
        if "lambda_kl" in values:
            c.train.lambda_kl = float(values["lambda_kl"])
        if "lr" in values:
            c.train.lr = float(values["lr"])
        label = "_".join(f"{k}{_label_value(v)}" for k, v in values.items())
        c.name = f"{config.name}_{label}"
        c.output_dir = os.path.join(config.output_dir, label)
        runs.append(Run(label, c))
    return runs


# -- the step ---------------------------------------------------------------------------------

def run_step(state: TS.TrainState, weights, sft: TS.SFTBatch, kl: TS.KLBatch | None, lam: jax.Array,
             lr: jax.Array, *, cfg: ModelConfig, opts: TS.StepOptions, optimizer: Callable):
    """One run's step (the Trainer's `train_step`) with its peak learning rate `lr` [] a traced
    scalar: `optimizer(lr)` is the run's own AdamW, schedule and non-finite skipping."""
    tx, _ = optimizer(lr)
    return TS.train_step(state, weights, sft, kl, lam, cfg=cfg, opts=opts, tx=tx)


def compile_vmapped_step(cfg: ModelConfig, opts: TS.StepOptions, optimizer: Callable, shared_batch: bool,
                         donate: bool = True):
    """The jitted step over N runs: step(state, weights, sft, kl, lam, lr) -> (state, metrics).

    state: a TrainState with every leaf [N, ...]; lam, lr: [N] float32; sft / kl: one step's
    batches, leaves [A, b, T, ...] shared by every run (`shared_batch`) or [N, A, b, T, ...];
    metrics: {name: [N]}. `optimizer(lr) -> (tx, schedule)` (TS.make_optimizer with the run's
    total steps, warmup, weight decay and clipping bound).
    """
    one = functools.partial(run_step, cfg=cfg, opts=opts, optimizer=optimizer)
    b = None if shared_batch else 0
    return jax.jit(jax.vmap(one, in_axes=(0, None, b, b, 0, 0)), donate_argnums=(0,) if donate else (),
                   compiler_options=NO_DOT_MERGER)


def stack_runs(per_seed: list, index: np.ndarray):
    """Batches of S data orders (leaves [A, b, T_s, ...]) -> per-run batches [N, A, b, T, ...]:
    right-padded with zeros to the widest T (what `pad_batch` pads with: id 0, masks False, zero
    activations) and gathered by `index` [N] (each run's data order); one order's batch as it is
    (every run shares it)."""
    if len(per_seed) == 1:
        return per_seed[0]
    width = max(b.tokens.shape[2] for b in per_seed)

    def pad(x):
        return jnp.pad(x, [(0, 0), (0, 0), (0, width - x.shape[2])] + [(0, 0)] * (x.ndim - 3))

    stacked = jax.tree.map(lambda *xs: jnp.stack([pad(x) for x in xs]), *per_seed)
    if len(index) == len(per_seed) and np.array_equal(index, np.arange(len(index))):
        return stacked
    return jax.tree.map(lambda x: x[jnp.asarray(index)], stacked)


def stacked_state(state: TS.TrainState, n: int) -> TS.TrainState:
    """N copies of one run's state, stacked on a leading axis (separate buffers: the step donates)."""
    return jax.tree.map(lambda x: jnp.stack([x] * n), state)


# -- the runs ---------------------------------------------------------------------------------

class VmappedTrainer:
    """Trains `runs` (from `expand_runs` over `config`) in one compiled step; see the module docstring.

    The data, the frozen cache, the batches, the evaluation and the output files are those of one
    `Trainer` over `config` (with the sweep's largest lambda, so the KL set is prepared when any
    run needs it); the loop is the Trainer's (`emjax.train.loop`) over the stacked state and step.
    """

    def __init__(self, config: ml_collections.ConfigDict, runs: Sequence[Run], model: LoadedModel | None = None):
        self.config, self.runs = config, list(runs)
        base = copy.deepcopy(config)
        base.train.lambda_kl = max(r.config.train.lambda_kl for r in self.runs)
        self.seeds = sorted({int(r.config.train.seed) for r in self.runs})  # the distinct data orders
        self.trainer = t = Trainer(base, model, data_seeds=self.seeds,  # its caches serve every order
                                   vmapped_runs=len(self.runs))
        tc = config.train
        self.optimizer = functools.partial(TS.make_optimizer, total_steps=t.total_steps,
                                           warmup_steps=tc.warmup_steps, weight_decay=tc.weight_decay,
                                           max_grad_norm=tc.max_grad_norm)
        self.lr = jnp.asarray([r.config.train.lr for r in self.runs], jnp.float32)
        self.seed_index = np.array([self.seeds.index(int(r.config.train.seed)) for r in self.runs])
        self.step_fn = compile_vmapped_step(t.cfg, t.opts, self.optimizer, shared_batch=len(self.seeds) == 1)
        self.described = json.loads(json.dumps([r.describe() for r in self.runs]))

    def _check(self, meta: dict) -> None:
        saved = meta.get("runs")  # before the state: other runs' would not fit it
        if saved != self.described:
            raise TrainConfigError(f"{os.path.abspath(os.path.join(self.config.output_dir, 'checkpoints'))} holds "
                                   f"the checkpoint of other runs ({[r['label'] for r in saved or []]}); "
                                   "use another output_dir")

    def loop_runs(self) -> Runs:
        """The runs for the loop: the state stacked [N, ...], the vmapped step."""
        t, n = self.trainer, len(self.runs)
        return Runs(config=self.config, configs=[r.config for r in self.runs], seed_index=self.seed_index,
                    schedules=[self.optimizer(r.config.train.lr)[1] for r in self.runs],
                    init_state=lambda: stacked_state(TS.init_state(t.params0, self.optimizer(1.0)[0]), n),
                    step=lambda state, sft, kl, lams: self.step_fn(state, t.model.weights, sft, kl,
                                                                   jnp.asarray(lams, jnp.float32), self.lr),
                    check=self._check, stack=lambda per_seed: stack_runs(per_seed, self.seed_index),
                    stacked=True, meta={"runs": self.described})

    def run(self, stop_at_step: int | None = None) -> dict[str, Any]:
        """Trains every run to the end (or until `stop_at_step`); resumes from the latest stacked
        checkpoint in output_dir. Returns {"name", "sweep", "runs": {label: summary}}."""
        done = finished_runs(self.config, self.runs)
        if done is not None:
            return done
        line = f"vmapped: {len(self.runs)} runs in one step ({', '.join(r.label for r in self.runs)})"
        out = train_runs(self.trainer, self.loop_runs(), stop_at_step, lines=[line])
        if isinstance(out, dict):
            return out
        result = {"name": self.config.name, "sweep": self.described,
                  "runs": {r.label: s for r, s in zip(self.runs, out)}}
        with open(os.path.join(self.config.output_dir, "vmapped_runs.json"), "w") as f:
            json.dump(result, f, indent=1, default=str)
        return result


def finished_runs(config: ml_collections.ConfigDict, runs: Sequence[Run]) -> dict[str, Any] | None:
    """vmapped_runs.json of `runs` when every run in it has finished (`finished_summary`), else None."""
    path = os.path.join(config.output_dir, "vmapped_runs.json")
    if not os.path.exists(path) or any(finished_summary(r.config) is None for r in runs):
        return None
    with open(path) as f:
        return json.load(f)


def train_vmapped(config: ml_collections.ConfigDict, sweep: Sweep, model: LoadedModel | None = None,
                  where: str = "--vmap-runs") -> dict[str, Any]:
    """`emjax train --vmap-runs`: expands the sweep (errors before the model loads) and trains it;
    when every run has finished, returns vmapped_runs.json as it is (nothing is loaded)."""
    runs = expand_runs(config, sweep, where)
    return finished_runs(config, runs) or VmappedTrainer(config, runs, model).run()
