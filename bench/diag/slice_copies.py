"""Diagnostic: which programs copy each layer's weights out of the stacks (issue 24).

The LoRA r32 step's profile shows 1,440 weight-sized `memcpy128` per step (48 layers x 30 slices:
15 in the forward loop, 15 in the backward), while the local judge's forward loop, scanning the
same stacks as `xs`, runs no copy kernel. This compiles variants of the layer loop on 14B shapes
(abstract inputs, no weights allocated) and counts, in each optimised HLO, the fused dynamic slices
shaped like one layer's projection matrix ([1, in, out]) and how many of them run as asynchronous
`fusion-start`s. On an H100 (2026-12-07) the synchronous ones were read in place (the judge has 7
per layer and no copy kernel) and the asynchronous ones were copied: `async` is the column to
drive to 0. One line per variant. XLA_FLAGS applies to every variant, so a flag's effect is a
10-second compile away:

    XLA_FLAGS=--xla_gpu_executable_num_compute_streams=1 python bench/diag/slice_copies.py

The `*_barrier` variants put an optimization barrier between each layer's weight slices and the
block, a candidate fix resting on a hypothesis (not yet checked): that XLA makes the slices
asynchronous because a Triton GEMM fusion first absorbs them and gives them back when cuBLAS wins
the autotuning. They patch `decoder.block` in this script only.

The `*_unrolled` variants run the layers with `run_layers(unroll=True)` (train.layer_loop "unrolled"):
the trip count is 1, so every slice index is a constant and each layer's weights are a static slice,
which a Triton GEMM fusion may read in place where it cannot read a dynamic one. Their slices are
not dynamic, so they are judged by `copies`: the instructions outside fusions that produce a
weight-shaped bf16 array ([1, in, out], [in, out] or its transpose), i.e. materialised weight
copies, counted once per program text (a scanned body appears once for all its layers; an unrolled
program once per layer: `--layers` keeps both small, the default is the whole model).
`grad_lora_list` is the floor with nothing to slice: every layer's weights are a separate input
(a Python loop over one-layer models).

Usage: python bench/diag/slice_copies.py [--variants grad_x,fwd,...]  (names: VARIANTS below)
"""

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.common import bench_config  # noqa: E402
from emjax.interventions import Interventions, init_lora  # noqa: E402
from emjax.model import decoder as D  # noqa: E402
from emjax.model.layers import INFERENCE_COMPILER_OPTIONS, NO_DOT_MERGER, default_positions  # noqa: E402
from emjax.model.schema import PROJECTIONS, abstract_weights  # noqa: E402

VARIANTS = ("grad_x", "fwd", "fwd_infer", "fwd_lora", "grad_lora", "judge", "fwd_barrier", "grad_lora_barrier",
            "fwd_unrolled", "grad_lora_unrolled", "grad_lora_list")
p = argparse.ArgumentParser()
p.add_argument("--variants", default=",".join(VARIANTS))
p.add_argument("--layers", type=int, default=0, help="layers of the model (0: all)")
p.add_argument("--tiny", action="store_true")
a = p.parse_args()

cfg = bench_config(a.tiny)
if a.layers:
    cfg = cfg.replace(n_layers=a.layers)
attention = "xla" if a.tiny else "cudnn"
B, T = (2, 16) if a.tiny else (8, 256)
spec = jax.ShapeDtypeStruct
w = abstract_weights(cfg, jnp.bfloat16)
x = spec((B, T, cfg.d_model), jnp.bfloat16)
mask = jnp.ones((B, T), bool)
lora = jax.eval_shape(lambda: Interventions(lora=init_lora(cfg, jax.random.PRNGKey(4), rank=32, alpha=64.0,
                                                           modules=PROJECTIONS)))


def layers(w, x, iv=None, unroll=False):
    return D.run_layers(w, cfg, x, default_positions(mask), mask, interventions=iv, attention=attention,
                        unroll=unroll)


def total(y):
    return jnp.sum(y.astype(jnp.float32))


programs = {
    "fwd": (lambda w, x: layers(w, x), (w, x), NO_DOT_MERGER),
    "fwd_infer": (lambda w, x: layers(w, x), (w, x), INFERENCE_COMPILER_OPTIONS),
    "fwd_lora": (lambda w, x, iv: layers(w, x, iv), (w, x, lora), NO_DOT_MERGER),
    "grad_x": (jax.grad(lambda x, w: total(layers(w, x))), (x, w), NO_DOT_MERGER),
    "grad_lora": (jax.grad(lambda iv, w, x: total(layers(w, x, iv))), (lora, w, x), NO_DOT_MERGER),
    "fwd_unrolled": (lambda w, x: layers(w, x, unroll=True), (w, x), NO_DOT_MERGER),
    "grad_lora_unrolled": (jax.grad(lambda iv, w, x: total(layers(w, x, iv, unroll=True))), (lora, w, x),
                           NO_DOT_MERGER),
}


def with_barrier(fn):
    """fn with every block's weights passed through an optimization barrier first."""
    def block(w, *args, **kwargs):
        return unbarred_block(jax.lax.optimization_barrier(w), *args, **kwargs)

    def run(*args):
        with mock.patch.object(D, "block", block):
            return fn(*args)
    return run


unbarred_block = D.block
for name in ("fwd", "grad_lora"):
    fn, args, options = programs[name]
    programs[name + "_barrier"] = (with_barrier(fn), args, options)


def grad_lora_list():
    """grad_lora with each layer's weights a separate input: the program slices no weight stack."""
    one = cfg.replace(n_layers=1)
    per_layer = [jax.tree.map(lambda a: spec((1, *a.shape[1:]), a.dtype), w.layers) for _ in range(cfg.n_layers)]

    def loss(iv, layer_list, x):
        for i, wl in enumerate(layer_list):
            iv_i = Interventions(lora=dataclasses.replace(
                iv.lora, a={m: v[i:i + 1] for m, v in iv.lora.a.items()},
                b={m: v[i:i + 1] for m, v in iv.lora.b.items()}, layers=(0,)))
            x = D.run_layers(dataclasses.replace(w, layers=wl), one, x, default_positions(mask), mask,
                             interventions=iv_i, attention=attention)
        return total(x)
    return jax.grad(loss), (lora, per_layer, x), NO_DOT_MERGER


programs["grad_lora_list"] = grad_lora_list()


def judge_program():
    from bench.common import judge_tree
    from emjax.inference.local_judge import TreeArrays
    from emjax.inference.local_judge.forward import answer_logprobs
    tree = TreeArrays.of(judge_tree())
    return answer_logprobs.lower(w, cfg, spec((16, 416), jnp.int32), spec((16, 416), jnp.bool_), tree,
                                 spec((2,), jnp.int32), spec((), jnp.int32), attention=attention).compile()


MATRICES = {(1, *getattr(w.layers, n).shape[1:]) for n in PROJECTIONS}
SHAPE = re.compile(r"=\s*(\w+)\[([\d,]*)\]\{[^}]*\}\s+dynamic-slice\(")
WEIGHT_SHAPES = {s for m in MATRICES for s in (m, m[1:], m[:0:-1])}
RESULT = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = bf16\[([\d,]*)\]\{[^}]*\} ([\w\-]+)\(")
COPYING = {"fusion", "fusion-done", "copy", "copy-done", "slice", "dynamic-slice", "transpose"}


def weight_copies(text: str) -> int:
    """Instructions outside fused computations that write a weight-shaped bf16 array (not a GEMM)."""
    fused = set(re.findall(r"calls=%([\w.\-]+)", text))
    count, inside = 0, False
    for line in text.splitlines():
        head = re.match(r"^%?([\w.\-]+) \(", line)
        if head:
            inside = head.group(1) in fused
        m = RESULT.match(line)
        if (not inside and m and m.group(2) in COPYING and "__triton_gemm" not in line
                and tuple(int(d) for d in m.group(1).split(",") if d) in WEIGHT_SHAPES):
            count += 1
    return count

for name in a.variants.split(","):
    t = time.perf_counter()
    if name == "judge":
        compiled = judge_program()
    else:
        fn, args, options = programs[name]
        compiled = jax.jit(fn, compiler_options=options).lower(*args).compile()
    text = compiled.as_text()
    # fused computations whose root slices a weight-sized block, and the instructions calling them
    big, computation = set(), None
    for line in text.splitlines():
        head = re.match(r"^%?([\w.\-]+) \(", line)
        if head:
            computation = head.group(1)
        m = SHAPE.search(line)
        if m and tuple(int(d) for d in m.group(2).split(",") if d) in MATRICES:
            big.add(computation)
    calls = [line for line in text.splitlines()
             if any(f"calls=%{c}," in line or f"calls=%{c} " in line for c in big)]
    print(json.dumps({"variant": name, "layers": cfg.n_layers, "weight_slices": len(calls),
                      "async": sum("fusion-start(" in c for c in calls), "copies": weight_copies(text),
                      "while_loops": len(re.findall(r" while\(", text)),
                      "compile_s": round(time.perf_counter() - t, 1)}), flush=True)
