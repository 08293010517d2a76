"""The training loop of one run and of N vmapped runs: steps, evaluation, metrics lines, checkpoints
and resume, snapshots, progress, and each run's summary.

    out = train_runs(trainer, runs, stop_at_step)   # [summary of run i] or {"stopped_at": step}

A `Runs` holds what differs between one run (`emjax.train.trainer.Trainer`, N=1, its own compiled
step) and N steering runs in one compiled step (`emjax.train.vmapped.VmappedTrainer`): each run's
config, the state and its step, the batches of several data orders made into one, the checkpoint
it may resume. The rest is the trainer's and shared by every run: data, frozen cache, batches
(one Batcher per data order in `trainer.data_seeds`), evaluation, `finish`, timings.

The checkpoint's metadata keeps the layout each trainer has always written (so that older
checkpoints resume): one run its batch positions and record as they are ("train_data",
"kl_data", "record"), stacked runs lists of them ("records") beside `Runs.meta`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from emjax.configuration import config_json
from emjax.data.batching import Batcher
from emjax.model.mesh_plan import fetch, is_writer, mesh_context
from emjax.train import step as TS
from emjax.train.checkpointing import Checkpointer
from emjax.train.inputs import TrainConfigError, kl_weight, uses_kl
from emjax.train.metrics_log import MetricsWriter
from emjax.timings import phase


@dataclasses.dataclass
class Runs:
    """What `train_runs` trains (see the module docstring).

    step(state, sft, kl, lambdas) -> (state, metrics): lambdas [N] the runs' KL weights at this
    step; metrics {name: [] for one run, [N] for stacked runs}. stack(batches of each data order)
    -> the step's batch. check(meta) raises TrainConfigError for a checkpoint of other runs.
    """

    config: ml_collections.ConfigDict  # recorded in the checkpoints, kept in <its output_dir>/checkpoints
    configs: list[ml_collections.ConfigDict]  # run i's: its output_dir, train section and summary
    seed_index: Sequence[int]  # run i's data order: trainer.data_seeds[seed_index[i]]
    schedules: list[Callable[[int], Any]]  # run i's learning rate at a step
    init_state: Callable[[], TS.TrainState]
    step: Callable[..., tuple[TS.TrainState, dict]]
    check: Callable[[dict], None]
    stack: Callable[[list], Any] = lambda per_order: per_order[0]
    stacked: bool = False  # state leaves [N, ...]; the summaries say vmapped_runs: N
    meta: dict = dataclasses.field(default_factory=dict)  # more metadata for the checkpoints of stacked runs

    def run_state(self, state: TS.TrainState, i: int) -> TS.TrainState:
        return run_state(state, i) if self.stacked else state


def run_state(state: TS.TrainState, i: int) -> TS.TrainState:
    """Run i's state out of a stacked one (leaves [N, ...])."""
    return jax.tree.map(lambda x: x[i], state)


def train_runs(t: Any, runs: Runs, stop_at_step: int | None = None,
               lines: Sequence[str] = ()) -> list[dict[str, Any]] | dict[str, int]:
    """Builds the caches of `t` (the `emjax.train.trainer.Trainer` whose data, batches, evaluation
    and `finish` the runs share; not imported here, as it imports this), prints its notes and
    `lines`, and trains `runs` to the end (or until `stop_at_step`), resuming from the latest
    checkpoint. Returns each run's summary, or {"stopped_at": step}."""
    with t.timings.running(), mesh_context(t.mesh):  # activations get their row constraints under a mesh
        os.makedirs(runs.config.output_dir, exist_ok=True)
        with phase("cache"):
            notes = list(t.notes) + t.build_caches()
        for line in notes + list(lines):
            print(line)
        with phase("compute"):
            out = _loop(t, runs, stop_at_step, notes)
    t.timings.report()
    return out


def _pack(runs: Runs, step: int, train_bs: list[Batcher], kl_bs: list[Batcher] | None,
          records: list[dict]) -> dict:
    """The checkpoint's metadata (see the module docstring)."""
    train, kl = [b.state() for b in train_bs], [b.state() for b in kl_bs] if kl_bs else None
    if runs.stacked:
        return {"step": step, **runs.meta, "train_data": train, "config": config_json(runs.config),
                "kl_data": kl, "records": [dict(r) for r in records]}
    return {"step": step, "train_data": train[0], "config": config_json(runs.config),
            "kl_data": kl[0] if kl else None, "record": dict(records[0])}


def _unpack(runs: Runs, meta: dict) -> tuple[list, list | None, list[dict]]:
    """(batch positions of each data order, of each KL order, each run's record) of a checkpoint."""
    if runs.stacked:
        return meta["train_data"], meta["kl_data"], meta.get("records") or []
    return [meta["train_data"]], [meta["kl_data"]], [meta.get("record") or {}]


def _loop(t: Any, runs: Runs, stop_at_step: int | None, notes: list[str]) -> list[dict[str, Any]] | dict[str, int]:
    tc, cc, n = runs.config.train, runs.config.checkpoint, len(runs.configs)
    ckpt = Checkpointer(os.path.join(runs.config.output_dir, "checkpoints"), keep=cc.keep, async_save=cc.async_save)
    state = runs.init_state()
    train_bs = [Batcher(t.data.train, t.rows_per_step, s) for s in t.data_seeds]
    kl_bs = ([Batcher(t.data.kl, tc.kl_batch_size * tc.grad_accum, s + 1) for s in t.data_seeds]
             if any(uses_kl(c) for c in runs.configs) else None)
    start = 0
    # each run's record: first and last training loss and the initial eval, kept in each
    # checkpoint so that a resumed run's summary has those of the steps before the resume
    records = [{"train_loss_first": None, "train_loss_last": None, "initial_eval": None} for _ in runs.configs]
    if ckpt.latest_step() is not None:
        try:  # before restoring: the state of other runs may not even fit this one
            runs.check(ckpt.restore_meta())
        except TrainConfigError:
            ckpt.close()
            raise
        state, meta = ckpt.restore(state)
        start = int(meta["step"])
        train_data, kl_data, saved = _unpack(runs, meta)
        train_bs = [Batcher.from_state(t.data.train, s) for s in train_data]
        if kl_bs is not None:
            kl_bs = [Batcher.from_state(t.data.kl, s) for s in kl_data]
        for r, s in zip(records, saved):
            r.update(s)
        print(f"resumed from step {start} ({ckpt.directory})")
    # process 0 writes; every process checkpoints. Lines past the checkpoint are written again.
    writers = []
    for c in runs.configs:
        os.makedirs(c.output_dir, exist_ok=True)
        writers.append(MetricsWriter(c.output_dir, enabled=is_writer(), resume_step=start))
    if start == 0:
        first_eval = t.evaluate(runs.run_state(state, 0).params)  # every run starts from the trainer's params0
        for w, r in zip(writers, records):
            r["initial_eval"] = first_eval
            w.write({"step": 0, **first_eval})
    bar = tqdm(total=t.total_steps, initial=start, unit="step",
               desc=f"train {runs.config.name}" + (f" x{n}" if runs.stacked else ""))
    end = t.total_steps if stop_at_step is None else min(stop_at_step, t.total_steps)
    final_evals: list[dict | None] = [None] * n  # the last step's evals: `finish` reuses them

    def save(step):
        ckpt.save(step, state, _pack(runs, step, train_bs, kl_bs, records))
        t.save_progress()

    try:
        for step in range(start, end):
            lams = [kl_weight(c, step) for c in runs.configs]
            sft = runs.stack([t.sft_batch(b) for b in train_bs])
            kl = runs.stack([t.kl_batch(b) for b in kl_bs]) if max(lams) > 0 else None
            state, m = runs.step(state, sft, kl, lams)
            m = fetch(m)
            last = step + 1 == t.total_steps
            evals = tc.eval_every and ((step + 1) % tc.eval_every == 0 or last)
            recs = []
            for i in range(n):
                # a run without KL at this step logs no "kl", as a separate run would
                rec = {"step": step + 1, "epoch": train_bs[runs.seed_index[i]].position[0],
                       "lr": float(runs.schedules[i](step)),
                       **{k: float(np.reshape(v, -1)[i]) for k, v in m.items() if k != "kl" or lams[i] > 0}}
                if evals:
                    evaluation = t.evaluate(runs.run_state(state, i).params)
                    rec.update(evaluation)
                    if last:
                        final_evals[i] = evaluation
                writers[i].write(rec)
                if records[i]["train_loss_first"] is None:
                    records[i]["train_loss_first"] = rec["sft_loss"]
                records[i]["train_loss_last"] = rec["sft_loss"]
                recs.append(rec)
            bar.set_postfix({k: f"{np.mean([r[k] for r in recs if k in r]):.3g}"
                             for k in ("sft_loss", "kl", "eval_loss") if any(k in r for r in recs)})
            bar.update(1)
            if cc.every and (step + 1) % cc.every == 0 and not last:
                save(step + 1)
            if cc.snapshot_every and (step + 1) % cc.snapshot_every == 0:
                for i, c in enumerate(runs.configs):
                    t.save_intervention(runs.run_state(state, i).params,
                                        os.path.join(c.output_dir, "snapshots", f"step_{step + 1:06d}"))
        if end == t.total_steps and ckpt.latest_step() != t.total_steps:
            save(t.total_steps)
    finally:
        bar.close()
        ckpt.close()
        for w in writers:
            w.close()
        t.save_progress()  # an interrupted session's seconds count too
    if end < t.total_steps:
        return {"stopped_at": end}
    extra = {"vmapped_runs": n} if runs.stacked else {}
    return [t.finish(runs.run_state(state, i), records[i], notes, config=c, final_eval=final_evals[i], **extra)
            for i, c in enumerate(runs.configs)]
