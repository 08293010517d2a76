"""Training an intervention with SFT + lambda * KL: one run's setup, data, frozen cache, batches,
evaluation and summary; its steps, checkpoints and resume are the loop's (`emjax.train.loop`,
shared with the vmapped runs of `emjax.train.vmapped`).

    summary = train(config)            # config: configs/default.py and the files beside it
    summary = Trainer(config).run()    # the same, once the model is loaded

Outputs in `config.output_dir`: `metrics.jsonl` (one line per step and per eval), `checkpoints/`
(Orbax), the final intervention (`steering.safetensors` or a PEFT folder `lora/`), `progress.json`
(the seconds so far) and `summary.json` (with the config it ran).

A rerun of a finished run returns its summary as it is on disk, and `train` does so before the
model loads; an interrupted run resumes from its latest checkpoint, and its summary describes the
whole run (first loss, initial eval, the seconds of every session); a run of another config in the
same output_dir is refused (`emjax.train.run_record`). The summary's `timings` split the seconds
into load, data, cache, compile and compute (`emjax.timings`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from emjax.checkpoints.load import LazyModel, LoadedModel, model_on_mesh
from emjax.configuration import check_values, config_json
from emjax.data.batching import Batcher
from emjax.data.tokenize import pad_batch
from emjax.interventions import Interventions, shared_prefix_layers
from emjax.interventions.arithmetic import norm_kind, tree_norm, update_norm
from emjax.interventions.files import load_interventions, save_steering
from emjax.interventions.similarity import effect_cosine, effect_projection
from emjax.interventions.peft import save_peft_lora
from emjax.model.attention import resolve_attention
from emjax.model.config import dtype_from_name
from emjax.model.mesh_plan import fetch, global_array, is_writer, put_rows, replicate
from emjax.model.sharding import ShardingError, batch_sharding
from emjax.train import step as TS
from emjax.train.frozen_cache import FrozenCache, cache_bytes
from emjax.train.frozen_store import FrozenStore, model_fingerprint
from emjax.train.inputs import (TrainConfigError, build_intervention, checked_loss_tokens, kl_weight, prepare_data,
                                rows_over_data, steer_rows_of, uses_kl)
from emjax.train.layer_loop import choose_layer_loop
from emjax.train.loop import Runs, train_runs
from emjax.train.memory import check_trainer_memory
from emjax.train.preflight import TRAIN_RULES
from emjax.train.run_record import (check_checkpoint, config_dict, earlier_sessions, finished_summary,
                                    write_progress)
from emjax.timings import Timings, phase


def train(config: ml_collections.ConfigDict, model: LoadedModel | LazyModel | None = None) -> dict[str, Any]:
    """One training run as the stage `emjax train` runs it: the finished run's summary when its
    output_dir holds one (nothing is loaded), else `Trainer(config, model).run()`."""
    done = finished_summary(config)
    return done if done is not None else Trainer(config, model).run()


class Trainer:
    """Trains one intervention as `config` says; see the module docstring."""

    def __init__(self, config: ml_collections.ConfigDict, model: LoadedModel | LazyModel | None = None,
                 data_seeds: Sequence[int] | None = None, vmapped_runs: int = 1):
        """data_seeds: the data orders whose batches this trainer's caches serve (default
        train.seed; the vmapped runs of several seeds pass theirs); vmapped_runs: how many runs
        its step will train at once (the memory check counts each run's own memory that often)."""
        self.config = config
        self.vmapped_runs = int(vmapped_runs)
        self.data_seeds = tuple(int(s) for s in data_seeds) if data_seeds else (int(config.train.seed),)
        earlier = earlier_sessions(config) or {}
        self.sessions = int(earlier.get("sessions", 0)) + 1
        self.timings = Timings(prior=earlier.get("timings"))
        with self.timings.running():
            self._setup(model)

    def _setup(self, model: LoadedModel | LazyModel | None) -> None:
        config = self.config
        tc = config.train
        check_values(config, TRAIN_RULES, error=TrainConfigError)  # before the model loads (the CLI checked them at load time already)
        checked_loss_tokens(config.data)
        if tc.kl_reduction not in ("token_mean", "upstream"):
            raise TrainConfigError(f"train.kl_reduction must be 'token_mean' or 'upstream', got {tc.kl_reduction!r}")
        steer_rows = steer_rows_of(config.intervention)
        try:
            dtype = dtype_from_name(config.model.dtype)
        except ValueError as e:
            raise TrainConfigError(f"model.dtype: {e}") from None
        try:
            with phase("load"):  # a Hugging Face folder is read straight into its shards
                model, self.plan = model_on_mesh(model or config.model.source, config.mesh, dtype=dtype)
        except ShardingError as e:
            raise TrainConfigError(f"mesh: {e}") from None
        self.mesh = self.plan.mesh
        self.model = model
        self.cfg = self.model.cfg
        with phase("data"):
            self.data = prepare_data(config, self.model)
            self.params0 = build_intervention(config.intervention, self.cfg)
        self.k = shared_prefix_layers(self.params0, self.cfg)
        self.use_kl = uses_kl(config)
        if self.use_kl and not self.data.kl:
            raise TrainConfigError("train.lambda_kl > 0 but data.kl_bad / data.kl_good gave no KL rows")
        problem = rows_over_data(config, self.mesh.shape["data"]) if self.mesh is not None else None
        if problem:
            raise TrainConfigError(f"mesh {self.plan.describe()}: {problem}")
        self.rows_per_step = tc.batch_size * tc.grad_accum
        if len(self.data.train) < self.rows_per_step:
            raise TrainConfigError(f"{len(self.data.train)} training rows cannot fill one step of "
                                   f"{tc.batch_size} x {tc.grad_accum} rows")
        steps_per_epoch = len(self.data.train) // self.rows_per_step
        self.total_steps = steps_per_epoch * tc.epochs
        if tc.max_steps is not None:
            self.total_steps = min(self.total_steps, tc.max_steps)
        self.tx, self.schedule = TS.make_optimizer(tc.lr, self.total_steps, tc.warmup_steps, tc.weight_decay,
                                                   tc.max_grad_norm)
        self.opts = TS.StepOptions(first_layer=self.k, remat=tc.remat,
                                   loss_chunk=tc.loss_chunk, kl_reduction=tc.kl_reduction,
                                   attention=resolve_attention(tc.attention, self.cfg), steer_rows=steer_rows,
                                   sft_mean_over=tc.get("sft_mean_over", "step"),
                                   kl_mean_over=tc.get("kl_mean_over", "step"))
        # what the setup did, printed at the start and kept in summary.json (with the cache's line)
        self.notes = list(self.data.notes)
        if steer_rows == "first":
            self.notes.append("steered rows: row 0 of each training micro-batch only (intervention.steer_rows="
                              "'first', upstream's hook); evaluation steers every row")
        summed = [t for t, over in (("SFT", self.opts.sft_mean_over), ("KL", self.opts.kl_mean_over))
                  if over == "micro_batch" and (t == "SFT" or self.use_kl)]
        if summed and tc.grad_accum > 1:
            self.notes.append(f"{' and '.join(summed)}: each micro-batch's own token mean, the {tc.grad_accum} "
                              "of a step added up (train.*_mean_over='micro_batch', upstream's trainer): such a "
                              f"term weighs {tc.grad_accum} x its step mean; the logged losses are step means")
        self.memory, limit = check_trainer_memory(self)  # prints the estimate; raises if it will not fit
        unroll, loop_note = choose_layer_loop(tc.layer_loop, self.memory, limit, self.total_steps * tc.grad_accum)
        self.opts = dataclasses.replace(self.opts, unroll_layers=unroll)
        self.notes += [loop_note] if loop_note else []
        self.step_fn = TS.compile_step(self.cfg, self.opts, self.tx)
        self.cache_train = self.cache_kl = None
        with phase("data"):
            self.references = load_interventions(tc.reference, self.cfg) if tc.reference else {}

    # -- frozen-model cache ----------------------------------------------------------------
    def rows_used(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted indices of the training rows and of the KL rows that the run's steps draw: the
        batches `run` draws (Batcher(train, rows per step, seed) every step, Batcher(kl, KL rows per
        step, seed + 1) on the steps with lambda > 0) for every data order in `data_seeds`. A run of
        all its epochs uses every row; a short one (train.max_steps) a fraction."""
        tc = self.config.train
        kl_steps = sum(self.lambda_at(s) > 0 for s in range(self.total_steps))
        train = [Batcher(self.data.train, self.rows_per_step, s).upcoming_rows(self.total_steps)
                 for s in self.data_seeds]
        kl = [Batcher(self.data.kl, tc.kl_batch_size * tc.grad_accum, s + 1).upcoming_rows(kl_steps)
              for s in self.data_seeds] if self.use_kl and kl_steps else []
        return np.unique(np.concatenate(train)), np.unique(np.concatenate(kl)) if kl else np.zeros(0, np.int64)

    def cache_bytes_needed(self) -> int:
        """Host bytes the frozen cache takes: the prefix of the training rows the run uses (when the
        intervention starts above layer 0) and the prefix and base outputs of the KL rows it uses."""
        itemsize = jnp.dtype(self.model.weights.embed.dtype).itemsize
        train, kl = self.rows_used()
        need = cache_bytes([len(self.data.train[i][0]) for i in train], self.cfg, itemsize, False) if self.k > 0 else 0
        return need + cache_bytes([len(self.data.kl[i]) for i in kl], self.cfg, itemsize, True)

    def cache_on(self) -> bool:
        """Whether `build_caches` builds the cache: asked for, something to cache, within budget."""
        tc = self.config.train
        need = self.cache_bytes_needed()
        return bool(tc.frozen_cache) and 0 < need <= tc.cache_budget_gb * 2**30

    def build_caches(self) -> list[str]:
        tc = self.config.train
        if not tc.frozen_cache:
            return ["frozen cache: off"]
        need = self.cache_bytes_needed()
        if need == 0:
            return ["frozen cache: nothing to cache (intervention starts at layer 0, no KL)"]
        if need > tc.cache_budget_gb * 2**30:
            return [f"frozen cache: off ({need / 2**30:.1f} GiB needed > budget {tc.cache_budget_gb} GiB)"]
        w = self.model.weights
        train, kl = self.rows_used()
        notes = [f"frozen cache: on ({need / 2**20:.0f} MiB for {len(train) if self.k > 0 else 0} of "
                 f"{len(self.data.train)} training rows and {len(kl)} of {len(self.data.kl)} KL rows)"]
        store_note, fingerprint = self._disk_cache()
        notes += [store_note] if store_note else []
        if self.k > 0:
            self.cache_train, line = FrozenCache.build(
                w, self.cfg, {int(i): self.data.train[i][0] for i in train}, self.k, with_base=False,
                store=self._store(fingerprint, False), desc="frozen prefix", mesh=self.mesh)
            notes.append(line)
        if len(kl):
            self.cache_kl, line = FrozenCache.build(
                w, self.cfg, {int(i): self.data.kl[i] for i in kl}, self.k, with_base=True,
                store=self._store(fingerprint, True), desc="KL base outputs", mesh=self.mesh)
            notes.append(line)
        return notes

    def _disk_cache(self) -> tuple[str | None, str | None]:
        """(a note when the disk cache is off, the model's fingerprint when it is on)."""
        tc = self.config.train
        if not tc.frozen_cache_disk:
            return "frozen cache: not kept on disk (train.frozen_cache_disk=False)", None
        if jax.process_count() > 1:  # every process encodes the same rows; files may not be shared
            return f"frozen cache: not kept on disk ({jax.process_count()} processes)", None
        return None, model_fingerprint(self.model.weights, self.cfg)

    def _store(self, fingerprint: str | None, with_base: bool) -> FrozenStore | None:
        """The disk cache's entry for this model, layer k and part (None when off)."""
        if fingerprint is None:
            return None
        tc = self.config.train
        root = tc.frozen_cache_dir or os.path.join(self.config.data.cache_dir, "frozen")
        return FrozenStore(root, model_name=self.model.name, model_source=str(self.model.source),
                           fingerprint=fingerprint, dtype=jnp.dtype(self.model.weights.embed.dtype).name,
                           k=self.k, with_base=with_base)

    # -- batches -----------------------------------------------------------------------------
    def sft_batch(self, batcher: Batcher) -> TS.SFTBatch:
        idx = batcher.next_indices()
        b = pad_batch([self.data.train[i] for i in idx])
        prefix = self.cache_train.gather(idx, b["tokens"].shape[1])[0] if self.cache_train is not None else None
        return self._stack(TS.SFTBatch(tokens=b["tokens"], mask=b["mask"], targets=b["targets"],
                                       loss_mask=b["loss_mask"], prefix=prefix))

    def kl_batch(self, batcher: Batcher) -> TS.KLBatch:
        idx = batcher.next_indices()
        b = pad_batch([self.data.kl[i] for i in idx])
        prefix = base = None
        if self.cache_kl is not None:
            prefix, base = self.cache_kl.gather(idx, b["tokens"].shape[1])
        return self._stack(TS.KLBatch(tokens=b["tokens"], mask=b["mask"], prefix=prefix, base_hidden=base))

    def _stack(self, batch):
        """[A * b, ...] host rows -> [A, b, ...] device arrays (b sharded over `data` with a mesh)."""
        a = self.config.train.grad_accum
        stacked = jax.tree.map(lambda x: x.reshape((a, x.shape[0] // a) + x.shape[1:]), batch)
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, stacked)
        return jax.tree.map(lambda x: global_array(x, batch_sharding(
            self.mesh, x.shape, batch_dim=1, name=f"micro-batch {x.shape} (train.batch_size rows)")), stacked)

    def lambda_at(self, step: int) -> float:
        return kl_weight(self.config, step)

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, params: Interventions) -> dict[str, float]:
        """Held-out in-domain loss and out-of-domain KL(base || adapted) in nats/token."""
        out = {}
        bs = 8
        if self.data.eval:
            s = n = 0.0
            for i in range(0, len(self.data.eval), bs):
                b = pad_batch(self.data.eval[i: i + bs])
                batch = TS.SFTBatch(**put_rows({k: b[k] for k in ("tokens", "mask", "targets", "loss_mask")},
                                               self.mesh))
                ds, dn = fetch(TS.eval_loss(params, self.model.weights, batch, cfg=self.cfg, opts=self.opts))
                s, n = s + float(ds), n + float(dn)
            out["eval_loss"] = s / max(n, 1.0)
        if self.data.kl_eval:
            s = n = 0.0
            for i in range(0, len(self.data.kl_eval), bs):
                b = pad_batch(self.data.kl_eval[i: i + bs])
                batch = TS.KLBatch(**put_rows({k: b[k] for k in ("tokens", "mask")}, self.mesh))
                ds, dn = fetch(TS.eval_kl(params, self.model.weights, batch, cfg=self.cfg, opts=self.opts))
                s, n = s + float(ds), n + float(dn)
            out["eval_kl_ood"] = s / max(n, 1.0)
        host = fetch(params) if self.references else None
        for label, ref in self.references.items():  # drift toward / away from reference solutions
            out[f"cos_{label}"] = float(effect_cosine(host, ref))
            out[f"proj_{label}"] = float(effect_projection(host, ref))
        return out

    # -- the loop (emjax.train.loop) ---------------------------------------------------------
    def run(self, stop_at_step: int | None = None) -> dict[str, Any]:
        """Trains to the end (or until `stop_at_step`, to simulate an interruption); resumes
        from the latest checkpoint in output_dir if there is one. A finished run's summary is
        returned as it is on disk."""
        done = finished_summary(self.config)
        if done is not None:
            return done
        out = train_runs(self, self.loop_runs(), stop_at_step)
        return out if isinstance(out, dict) else out[0]

    def loop_runs(self) -> Runs:
        """This run for the loop: N=1, its own state and compiled step."""
        def check(meta):
            recorded = meta.get("config")
            check_checkpoint(self.config, json.loads(recorded) if recorded else None)

        return Runs(config=self.config, configs=[self.config], seed_index=[0], schedules=[self.schedule],
                    init_state=lambda: replicate(TS.init_state(self.params0, self.tx), self.mesh),
                    step=lambda state, sft, kl, lams: self.step_fn(state, self.model.weights, sft, kl,
                                                                   jnp.float32(lams[0])),
                    check=check)

    def save_progress(self) -> None:
        """progress.json: this run's seconds so far (process 0; see emjax.train.run_record)."""
        if is_writer():
            write_progress(self.config, self.timings.seconds(), self.sessions)

    def save_intervention(self, params: Interventions, folder: str) -> str:
        """Writes `folder`/steering.safetensors or the PEFT folder `folder`/lora (process 0 only);
        returns its path."""
        path = os.path.join(folder, "steering.safetensors" if params.steer is not None else "lora")
        params = fetch(params)  # every process joins the gather; one writes
        if not is_writer():
            return path
        os.makedirs(folder, exist_ok=True)
        if params.steer is not None:
            save_steering(params.steer, path, model_name=self.model.name)
        else:
            ic = self.config.intervention  # the config's pair, as given (same scale, the record a reader expects)
            save_peft_lora(params.lora, path, base_model_name_or_path=self.model.source, cfg=self.cfg,
                           alpha=float(ic.lora_alpha), rslora=bool(ic.rslora))
        return path

    def finish(self, state, record: dict[str, Any], notes: list[str], config: ml_collections.ConfigDict | None = None,
               final_eval: dict[str, float] | None = None, **extra) -> dict[str, Any]:
        """Writes the final intervention and summary.json (with `extra` keys) into the output_dir of
        `config` (default: this trainer's); returns the summary.

        record: the whole run's train_loss_first, train_loss_last and initial_eval; final_eval:
        the loop's eval of the last step (evaluated here when None). The summary's timings are
        this trainer's, stopped here (those of every session of the run)."""
        config = self.config if config is None else config
        out = config.output_dir
        params = state.params
        artefact = self.save_intervention(params, out)
        if final_eval is None:
            final_eval = self.evaluate(params)
        skipped = int(fetch(state.opt_state.total_notfinite))
        params = fetch(params)
        summary = {
            "name": config.name, "model": self.model.name, "steps": self.total_steps,
            "shared_prefix_layers": self.k, "lambda_kl": config.train.lambda_kl,
            "loss_tokens": config.data.loss_tokens,  # which tokens train_loss / eval_loss are taken on
            "train_loss_first": record["train_loss_first"], "train_loss_last": record["train_loss_last"],
            "initial_eval": record["initial_eval"], "final_eval": final_eval, "nonfinite_steps_skipped": skipped,
            # what the intervention adds, as the metrics measure it: ||alpha v|| or ||scale B A||_F
            "intervention_norm": float(update_norm(params)), "norm_kind": norm_kind(params),
            "param_norm": float(tree_norm(params)),  # of the raw leaves (v; A and B)
            "seed": config.train.seed, "init_seed": config.intervention.init_seed,
            "steer_rows": config.intervention.steer_rows,
            "init_from": config.intervention.init_from,
            "artefact": artefact, "notes": notes, **extra,
        }
        timings = self.timings.stop()
        summary.update(seconds=round(timings["total"], 1), timings=timings, sessions=self.sessions,
                       config=config_dict(config))
        if is_writer():
            with open(os.path.join(out, "summary.json"), "w") as f:
                json.dump(summary, f, indent=1)
        return summary
