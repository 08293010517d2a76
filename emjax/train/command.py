"""`emjax train`: one run, replicates (`--seeds`) or vmapped runs (`--vmap-runs` or the config's
`vmap_runs` section), chosen from what the command line gave; the CLI only parses.

    text = train_from_cli(config, seeds=[0, 1], vmap_runs=None)   # what the command prints
"""

from __future__ import annotations

import json
from typing import Sequence

import ml_collections

from emjax.train.inputs import TrainConfigError, checked_loss_tokens
from emjax.train.replicates import train_replicates
from emjax.train.trainer import train
from emjax.train.vmapped import sweep_of, train_vmapped


def train_from_cli(config: ml_collections.ConfigDict, seeds: Sequence[int] | None = None,
                   vmap_runs: Sequence[str] | None = None) -> str:
    """Trains what `emjax train` was asked for; returns the text it prints: the runs' final evals
    (vmapped), the spread over seeds (replicates) or the summary (one run), and where they are."""
    checked_loss_tokens(config.data)  # before any model loads (replicates load it before their Trainers)
    declared = sweep_of(config, vmap_runs)
    if declared is not None:
        sweep, where = declared
        if seeds:
            raise TrainConfigError(f"--seeds with {where}: give the seeds as an axis, --vmap-runs seed=0,1,2 ...")
        out = train_vmapped(config, sweep, where=where)
        return (json.dumps({label: s["final_eval"] for label, s in out["runs"].items()}, indent=1) + "\n"
                f"{len(out['runs'])} runs in {config.output_dir}/*/ (summary: {config.output_dir}/vmapped_runs.json)")
    if seeds:
        out = train_replicates(config, seeds)
        return (json.dumps(out["spread"], indent=1) + "\n"
                f"replicates in {config.output_dir}/seed*/ (summary: {config.output_dir}/replicates.json)")
    return json.dumps(train(config), indent=1)
