"""What a training run's output_dir already holds, read before any model work: whether the run
has finished, whether the checkpoint there belongs to the requested config, and the seconds of
earlier sessions of an interrupted run.

    done = finished_summary(config)   # summary.json of this config with its artefact, else None
    check_checkpoint(config)          # TrainConfigError when output_dir holds another config's run

A run is the same run when its config equals the recorded one in every key that changes what is
computed; `SAME_RUN_KEYS` lists those that do not (where files go, how devices and memory are
used, when it checkpoints or evaluates). A run of another config in the same output_dir is
refused, naming the keys that differ: retraining there would overwrite it, and resuming its
checkpoint would train a mix of both.

`progress.json` beside the checkpoints holds the seconds of every session so far (written at each
checkpoint and when a session ends, also by an interruption), so that the summary of a resumed
run describes the whole run.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from emjax.configuration import config_json
from emjax.train.inputs import TrainConfigError

SUMMARY = "summary.json"
PROGRESS = "progress.json"
CHECKPOINTS = "checkpoints"

# Config keys (and sections) that do not change what a run computes, up to rounding (ours).
SAME_RUN_KEYS = ("name", "output_dir", "mesh", "checkpoint", "data.cache_dir", "train.frozen_cache",
                 "train.cache_budget_gb", "train.memory_check", "train.remat", "train.loss_chunk",
                 "train.attention", "train.layer_loop", "train.eval_every")


def config_dict(config: ml_collections.ConfigDict) -> dict:
    """The config as the JSON a run records (tuples as lists)."""
    return json.loads(config_json(config))


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_differences(recorded: dict, requested: dict, same_run_keys=SAME_RUN_KEYS) -> list[str]:
    """"key: recorded -> requested" for every key that changes results and differs. A key that only
    one side has is left out: options added since the run was recorded default to the behaviour
    before them (the convention of configs/default.py), and removed ones no longer apply."""
    a, b = _flat(recorded), _flat(requested)
    ignored = tuple(same_run_keys)
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(set(a) & set(b))
            if a[k] != b[k] and not any(k == p or k.startswith(p + ".") for p in ignored)]


def refuse_other_config(out: str, what: str, diff: list[str]) -> TrainConfigError:
    shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
    return TrainConfigError(f"{out} holds {what} of another config ({shown}): give another output_dir, "
                            f"or delete {out} to train this config there")


def checkpoint_config(out: str) -> dict | None:
    """The config recorded with the latest checkpoint in `out`/checkpoints (None: no checkpoint)."""
    folder = os.path.join(out, CHECKPOINTS)
    if not os.path.isdir(folder):
        return None
    from emjax.train.checkpointing import Checkpointer
    ckpt = Checkpointer(folder, async_save=False)
    try:
        if ckpt.latest_step() is None:
            return None
        recorded = ckpt.restore_meta().get("config")
    finally:
        ckpt.close()
    return json.loads(recorded) if isinstance(recorded, str) else recorded


def check_checkpoint(config: ml_collections.ConfigDict, recorded: dict | None = None) -> None:
    """TrainConfigError when output_dir's latest checkpoint is of another config (`recorded`:
    that checkpoint's config, read from disk when None)."""
    recorded = checkpoint_config(config.output_dir) if recorded is None else recorded
    diff = config_differences(recorded, config_dict(config)) if recorded else []
    if diff:
        raise refuse_other_config(config.output_dir, "the checkpoint of a run", diff)


def finished_summary(config: ml_collections.ConfigDict) -> dict | None:
    """The summary of the finished run of `config` in its output_dir (printed as one line), or
    None when the run has not finished there (no summary.json, or its artefact is gone).

    Raises TrainConfigError when output_dir holds a run of another config (finished or not)."""
    out = config.output_dir
    path = os.path.join(out, SUMMARY)
    if not os.path.exists(path):
        check_checkpoint(config)
        return None
    with open(path) as f:
        summary = json.load(f)
    recorded = summary.get("config") or checkpoint_config(out)
    if recorded is None:
        print(f"warning: {path} records no config (an older emjax): taken as this config's run unchecked")
    else:
        diff = config_differences(recorded, config_dict(config))
        if diff:
            raise refuse_other_config(out, "a finished run", diff)
    artefact = summary.get("artefact")
    if not artefact or not os.path.exists(artefact):
        print(f"{path}: its artefact {artefact} is missing; finishing the run again")
        return None
    print(f"finished: {path} ({describe(summary)})", flush=True)
    return summary


def describe(summary: dict) -> str:
    """The key numbers of a training summary, for one line."""
    parts = [f"{summary.get('steps')} steps"]
    first, last = summary.get("train_loss_first"), summary.get("train_loss_last")
    if first is not None and last is not None:
        parts.append(f"train loss {first:.4g} -> {last:.4g}")
    before, after = summary.get("initial_eval") or {}, summary.get("final_eval") or {}
    for key, name in (("eval_loss", "held-out loss"), ("eval_kl_ood", "out-of-domain KL")):
        if key in after:
            start = f"{before[key]:.4g} -> " if key in before else ""
            parts.append(f"{name} {start}{after[key]:.4g}")
    if summary.get("intervention_norm") is not None:
        parts.append(f"norm {summary['intervention_norm']:.4g}")
    parts.append(f"{summary.get('seconds')} s")
    return "; ".join(parts)


def earlier_sessions(config: ml_collections.ConfigDict) -> dict | None:
    """progress.json of earlier sessions of this config's run ({"timings", "sessions"}), or None
    (none, or one of another config)."""
    path = os.path.join(config.output_dir, PROGRESS)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        progress = json.load(f)
    if config_differences(progress.get("config") or {}, config_dict(config)):
        return None
    return progress


def write_progress(config: ml_collections.ConfigDict, timings: dict, sessions: int) -> None:
    """progress.json: the seconds of the run so far, over `sessions` sessions (atomic)."""
    path = os.path.join(config.output_dir, PROGRESS)
    with open(path + ".tmp", "w") as f:
        json.dump({"config": config_dict(config), "timings": timings, "sessions": sessions}, f, indent=1)
    os.replace(path + ".tmp", path)
