"""Diagnostic: the optimised HLO of one 14B program, to name the fusions a profile lists
(`profile_kernels.py` prints kernel names such as loop_dynamic_slice_fusion_3; this prints what
each of them computes, with its operand and result shapes).

Usage: python bench/diag/compiled_hlo.py --case lora32|judge [--grep dynamic_slice_fusion]
Writes the whole module to $OUT/<case>.hlo.txt.gz; no weights are allocated (abstract inputs).
"""

import argparse
import gzip
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.common import bench_config  # noqa: E402
from emjax.model.schema import abstract_weights  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--case", choices=["lora32", "judge"], required=True)
p.add_argument("--grep", default="dynamic_slice_fusion|concatenate|broadcast_fusion|transpose")
p.add_argument("--tiny", action="store_true")
a = p.parse_args()

cfg = bench_config(a.tiny)
w = abstract_weights(cfg, jnp.bfloat16)
spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
if a.case == "lora32":
    from emjax.interventions import Interventions, init_lora
    from emjax.model.schema import PROJECTIONS
    from emjax.train import step as TS
    B, T = (2, 16) if a.tiny else (8, 256)
    tok, m = spec((1, B, T), jnp.int32), spec((1, B, T), jnp.bool_)
    sft = TS.SFTBatch(tokens=tok, mask=m, targets=tok, loss_mask=m)
    params = jax.eval_shape(lambda: Interventions(lora=init_lora(cfg, jax.random.PRNGKey(4), rank=32, alpha=64.0,
                                                                  modules=PROJECTIONS)))
    tx, _ = TS.make_optimizer(1e-4, total_steps=1000, warmup_steps=0)
    state = jax.eval_shape(lambda p: TS.init_state(p, tx), params)
    step = TS.compile_step(cfg, TS.StepOptions(first_layer=0, attention="xla" if a.tiny else "cudnn"), tx)
    compiled = step.lower(state, w, sft, None, jnp.float32(1.0)).compile()
else:
    from bench.common import judge_tree
    from emjax.inference.local_judge import TreeArrays
    from emjax.inference.local_judge.forward import answer_logprobs
    tree = TreeArrays.of(judge_tree())
    compiled = answer_logprobs.lower(w, cfg, spec((16, 416), jnp.int32), spec((16, 416), jnp.bool_), tree,
                                     spec((2,), jnp.int32), spec((), jnp.int32),
                                     attention="xla" if a.tiny else "cudnn").compile()
text = compiled.as_text()
out = os.environ.get("OUT", ".")
with gzip.open(os.path.join(out, f"{a.case}.hlo.txt.gz"), "wt") as f:
    f.write(text)
# every fusion instruction whose name matches, with its shape and the computation it calls
for line in text.splitlines():
    s = line.strip()
    if re.search(a.grep, s.split("=")[0]) and " fusion(" in s:
        print(s[:400])
