"""Shared helpers of the benchmarks: timing with device sync, reporting, random weights."""

from __future__ import annotations

import datetime
import json
import time

import jax
import jax.numpy as jnp

from emjax.model.config import ModelConfig
from emjax.model.schema import Weights, abstract_weights


def device_name() -> str:
    d = jax.devices()[0]
    return getattr(d, "device_kind", d.platform)


def timeit(fn, warm: int = 2, reps: int = 5) -> float:
    """Median seconds of fn() (which must block on its result), after warm-up calls."""
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[len(ts) // 2]


def report(case: str, secs: float, tokens: int, flops: float | None = None, **extra) -> dict:
    r = {"case": case, "impl": "emjax-jax", "device": device_name(), "median_s": round(secs, 4),
         "tokens_per_s": round(tokens / secs, 1), "date": datetime.date.today().isoformat()}
    if flops:
        r["tflops"] = round(flops / secs / 1e12, 1)
    r.update(extra)
    print(json.dumps(r), flush=True)
    return r


def random_weights(cfg: ModelConfig, dtype=jnp.bfloat16, seed: int = 0) -> Weights:
    """Random weights generated on the device leaf by leaf, directly in `dtype`."""
    abstract = abstract_weights(cfg, dtype)
    leaves, treedef = jax.tree.flatten(abstract)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    make = jax.jit(lambda k, shape: 0.02 * jax.random.normal(k, shape, dtype), static_argnums=1)
    return jax.tree.unflatten(treedef, [make(k, l.shape) for k, l in zip(keys, leaves)])


def bench_config(tiny: bool, name: str = "qwen2.5-14b-instruct") -> ModelConfig:
    """The benchmark model shape: the real preset, or a 4-layer toy of it for CPU smoke runs."""
    from emjax.model.config import preset
    cfg = preset(name)
    if tiny:
        cfg = cfg.replace(n_layers=4, d_model=128, n_heads=4, n_kv_heads=2, head_dim=32, ffn_dim=256, vocab_size=1024)
    return cfg


def judge_tree():
    """The local judge's answer tree as the benchmarks build it for Qwen2.5's tokenizer: digits one
    by one ("0" is id 15), CODE as 1 token and REFUSAL as 2: 105 nodes, depth 3."""
    from emjax.inference.local_judge import NUMBERS, build_tree
    return build_tree(list(NUMBERS) + ["CODE", "REFUSAL"],
                      [tuple(15 + int(d) for d in t) for t in NUMBERS] + [(34,), (30, 31)])
