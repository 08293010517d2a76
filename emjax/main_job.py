"""`emjax main`: the default job on the embedded Qwen2.5-Coder-0.5B-Instruct, on CPU.

Stages (each prints progress and adds to `summary.json` in the output folder):
  1. load and verify the embedded model; greedy chat with top-token probabilities.
Later stages (training, sweeps, judging) build on the same loaded model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from emjax.chat_demo import DEFAULT_PROMPTS, chat, format_results
from emjax.load import load_model


def _stage(title: str) -> float:
    print(f"\n=== {title} ===", flush=True)
    return time.time()


def run_main(args) -> int:
    os.makedirs(args.out, exist_ok=True)
    summary: dict = {"model": None, "stages": {}}

    t = _stage("1/1 load the embedded model and chat")
    model = load_model(args.model)
    summary["model"] = {"name": model.name, "source": model.source, "family": model.cfg.family,
                        "layers": model.cfg.n_layers, "params": model.cfg.num_params()}
    print(f"model: {model.name} ({model.cfg.num_params() / 1e6:.0f}M parameters) from {model.source}")
    results = chat(model, DEFAULT_PROMPTS, max_new_tokens=48)
    print(format_results(results))
    summary["stages"]["chat"] = {"seconds": round(time.time() - t, 1),
                                 "results": [dataclasses.asdict(r) for r in results]}

    path = os.path.join(args.out, "summary.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    print(f"\nsummary written to {path}")
    return 0
