"""Replicate runs: the same config trained under several seeds (`emjax train --seeds 0,1,2`).

Seed s sets the data order (`train.seed = s`) and the intervention's initialisation
(`intervention.init_seed = <the config's init_seed> + s`; general configs start at 0 and narrow
ones at 1000, so a general and a narrow replicate never share a LoRA init). The held-out split
and the KL set stay those of `data.seed`: replicates differ in optimisation, not in data. Each
replicate writes to `<output_dir>/seed<s>/`; `<output_dir>/replicates.json` holds every summary
and the spread (mean, std, min, max over seeds) of the final numbers.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Sequence

import ml_collections
import numpy as np

from emjax.checkpoints.load import LazyModel, LoadedModel
from emjax.model.config import dtype_from_name
from emjax.train.trainer import train


def replicate_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """The config of replicate `seed` (see the module docstring)."""
    c = copy.deepcopy(config)
    c.train.seed = int(seed)
    c.intervention.init_seed = int(config.intervention.init_seed) + int(seed)
    c.name = f"{config.name}_seed{seed}"
    c.output_dir = os.path.join(config.output_dir, f"seed{seed}")
    return c


def spread(values: Sequence[float]) -> dict[str, float]:
    """mean, std (ddof 1; 0 for one value), min, max and n of a list of numbers."""
    v = np.asarray([x for x in values if x is not None], float)
    if not len(v):
        return {"n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def train_replicates(config: ml_collections.ConfigDict, seeds: Sequence[int],
                     model: LoadedModel | None = None) -> dict[str, Any]:
    """Trains one replicate per seed (the model is loaded once, and only when one has not
    finished) and writes replicates.json."""
    model = LazyModel(model or config.model.source, dtype=dtype_from_name(config.model.dtype))
    runs = {}
    for s in seeds:
        print(f"\n--- replicate seed {s} of {list(seeds)} ---", flush=True)
        runs[int(s)] = train(replicate_config(config, s), model)
    keys = ("eval_loss", "eval_kl_ood")
    out = {"name": config.name, "seeds": [int(s) for s in seeds], "runs": runs,
           "spread": {k: spread([r["final_eval"].get(k) for r in runs.values()]) for k in keys}}
    out["spread"]["intervention_norm"] = spread([r["intervention_norm"] for r in runs.values()])
    path = os.path.join(config.output_dir, "replicates.json")
    if not model.loaded and os.path.exists(path):  # every replicate had finished: leave the file as it is
        return out
    os.makedirs(config.output_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1, default=str)
    return out
