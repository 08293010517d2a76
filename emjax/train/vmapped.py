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
from tqdm.auto import tqdm

from emjax.checkpoints.load import LoadedModel
from emjax.configuration import config_json
from emjax.data.batching import Batcher
from emjax.model.config import ModelConfig
from emjax.train import step as TS
from emjax.train.checkpointing import Checkpointer
from emjax.train.inputs import TrainConfigError
from emjax.train.metrics_log import MetricsWriter
from emjax.train.replicates import replicate_config
from emjax.train.run_record import finished_summary
from emjax.train.trainer import Trainer, kl_weight
from emjax.timings import phase

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
    return jax.jit(jax.vmap(one, in_axes=(0, None, b, b, 0, 0)), donate_argnums=(0,) if donate else ())


def stack_runs(per_seed: list, index: np.ndarray):
    """Batches of S data orders (leaves [A, b, T_s, ...]) -> per-run batches [N, A, b, T, ...]:
    right-padded with zeros to the widest T (what `pad_batch` pads with: id 0, masks False, zero
    activations) and gathered by `index` [N] (each run's data order)."""
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


def run_state(state: TS.TrainState, i: int) -> TS.TrainState:
    """Run i's state out of the stacked one."""
    return jax.tree.map(lambda x: x[i], state)


# -- the loop ---------------------------------------------------------------------------------

class VmappedTrainer:
    """Trains `runs` (from `expand_runs` over `config`) in one compiled step; see the module docstring.

    The data, the frozen cache, the batches, the evaluation and the output files are those of one
    `Trainer` over `config` (with the sweep's largest lambda, so the KL set is prepared when any
    run needs it); only the loop and the step are vmapped.
    """

    def __init__(self, config: ml_collections.ConfigDict, runs: Sequence[Run], model: LoadedModel | None = None):
        self.config, self.runs = config, list(runs)
        base = copy.deepcopy(config)
        base.train.lambda_kl = max(r.config.train.lambda_kl for r in self.runs)
        self.seeds = sorted({int(r.config.train.seed) for r in self.runs})  # the distinct data orders
        self.trainer = t = Trainer(base, model, data_seeds=self.seeds)  # its caches serve every order
        tc = config.train
        self.optimizer = functools.partial(TS.make_optimizer, total_steps=t.total_steps,
                                           warmup_steps=tc.warmup_steps, weight_decay=tc.weight_decay,
                                           max_grad_norm=tc.max_grad_norm)
        self.schedules = [self.optimizer(r.config.train.lr)[1] for r in self.runs]
        self.lr = jnp.asarray([r.config.train.lr for r in self.runs], jnp.float32)
        self.use_kl = [r.config.train.lambda_kl > 0 and bool(t.data.kl) for r in self.runs]
        self.seed_index = np.array([self.seeds.index(int(r.config.train.seed)) for r in self.runs])
        self.step_fn = compile_vmapped_step(t.cfg, t.opts, self.optimizer, shared_batch=len(self.seeds) == 1)

    def lambdas_at(self, step: int) -> list[float]:
        return [kl_weight(r.config.train, u, step) for r, u in zip(self.runs, self.use_kl)]

    def _batch(self, make: Callable, batchers: list[Batcher]):
        per_seed = [make(b) for b in batchers]
        return per_seed[0] if len(per_seed) == 1 else stack_runs(per_seed, self.seed_index)

    def run(self, stop_at_step: int | None = None) -> dict[str, Any]:
        """Trains every run to the end (or until `stop_at_step`); resumes from the latest stacked
        checkpoint in output_dir. Returns {"name", "sweep", "runs": {label: summary}}."""
        done = finished_runs(self.config, self.runs)
        if done is not None:
            return done
        t = self.trainer
        with t.timings.running():
            with phase("cache"):
                notes = list(t.notes) + t.build_caches()
            with phase("compute"):
                out = self._loop(stop_at_step, notes)
        t.timings.report()
        return out

    def _loop(self, stop_at_step: int | None, notes: list[str]) -> dict[str, Any]:
        t, config, tc, cc = self.trainer, self.config, self.config.train, self.config.checkpoint
        n, out = len(self.runs), config.output_dir
        os.makedirs(out, exist_ok=True)
        for line in notes + [f"vmapped: {n} runs in one step ({', '.join(r.label for r in self.runs)})"]:
            print(line)
        described = json.loads(json.dumps([r.describe() for r in self.runs]))
        ckpt = Checkpointer(os.path.join(out, "checkpoints"), keep=cc.keep, async_save=cc.async_save)
        state = stacked_state(TS.init_state(t.params0, self.optimizer(1.0)[0]), n)
        any_kl = any(self.use_kl)
        train_bs = [Batcher(t.data.train, t.rows_per_step, s) for s in self.seeds]
        kl_bs = [Batcher(t.data.kl, tc.kl_batch_size * tc.grad_accum, s + 1) for s in self.seeds] if any_kl else None
        start = 0
        # each run's first and last loss and the initial eval, kept in the checkpoints (as Trainer's)
        records = [{"train_loss_first": None, "train_loss_last": None, "initial_eval": None} for _ in self.runs]
        if ckpt.latest_step() is not None:
            saved = ckpt.restore_meta().get("runs")  # before the state: other runs' would not fit it
            if saved != described:
                ckpt.close()
                raise TrainConfigError(f"{ckpt.directory} holds the checkpoint of other runs "
                                       f"({[r['label'] for r in saved or []]}); use another output_dir")
            state, meta = ckpt.restore(state)
            start = int(meta["step"])
            train_bs = [Batcher.from_state(t.data.train, s) for s in meta["train_data"]]
            if kl_bs is not None:
                kl_bs = [Batcher.from_state(t.data.kl, s) for s in meta["kl_data"]]
            for r, saved_record in zip(records, meta.get("records") or []):
                r.update(saved_record)
            print(f"resumed from step {start} ({ckpt.directory})")
        writers = []
        for r in self.runs:
            os.makedirs(r.config.output_dir, exist_ok=True)
            writers.append(MetricsWriter(r.config.output_dir, resume_step=start))
        if start == 0:
            first_eval = t.evaluate(t.params0)  # every run starts from params0
            for w, r in zip(writers, records):
                r["initial_eval"] = first_eval
                w.write({"step": 0, **first_eval})
        bar = tqdm(total=t.total_steps, initial=start, desc=f"train {config.name} x{n}", unit="step")
        end = t.total_steps if stop_at_step is None else min(stop_at_step, t.total_steps)

        def save(step):
            meta = {"step": step, "runs": described, "train_data": [b.state() for b in train_bs],
                    "config": config_json(config), "kl_data": [b.state() for b in kl_bs] if kl_bs else None,
                    "records": [dict(r) for r in records]}
            ckpt.save(step, state, meta)
            t.save_progress()

        try:
            for step in range(start, end):
                lams = self.lambdas_at(step)
                sft = self._batch(t.sft_batch, train_bs)
                kl = self._batch(t.kl_batch, kl_bs) if max(lams) > 0 else None
                state, m = self.step_fn(state, t.model.weights, sft, kl, jnp.asarray(lams, jnp.float32), self.lr)
                m = jax.device_get(m)
                evals = tc.eval_every and ((step + 1) % tc.eval_every == 0 or step + 1 == t.total_steps)
                for i, r in enumerate(self.runs):
                    # a run without KL at this step logs no "kl", as a separate run would
                    rec = {"step": step + 1, "epoch": train_bs[self.seed_index[i]].position[0],
                           "lr": float(self.schedules[i](step)),
                           **{k: float(v[i]) for k, v in m.items() if k != "kl" or lams[i] > 0}}
                    if evals:
                        rec.update(t.evaluate(run_state(state, i).params))
                    writers[i].write(rec)
                    if records[i]["train_loss_first"] is None:
                        records[i]["train_loss_first"] = rec["sft_loss"]
                    records[i]["train_loss_last"] = rec["sft_loss"]
                    if cc.snapshot_every and (step + 1) % cc.snapshot_every == 0:
                        t.save_intervention(run_state(state, i).params,
                                            os.path.join(r.config.output_dir, "snapshots", f"step_{step + 1:06d}"))
                bar.set_postfix({"sft_loss": f"{float(np.mean(m['sft_loss'])):.3g}"})
                bar.update(1)
                if cc.every and (step + 1) % cc.every == 0 and step + 1 < t.total_steps:
                    save(step + 1)
            if end == t.total_steps and ckpt.latest_step() != t.total_steps:
                save(t.total_steps)
        finally:
            bar.close()
            ckpt.close()
            for w in writers:
                w.close()
            t.save_progress()
        if end < t.total_steps:
            return {"stopped_at": end}
        summaries = {r.label: t.finish(run_state(state, i), records[i], notes, config=r.config, vmapped_runs=n)
                     for i, r in enumerate(self.runs)}
        result = {"name": config.name, "sweep": described, "runs": summaries}
        with open(os.path.join(out, "vmapped_runs.json"), "w") as f:
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
