"""Diagnostic: compile the decode program of a 14B-shaped model from abstract weights (no
weights needed), write its optimised HLO and list the copies and fusions inside the decode loop.

Usage: python bench/diag/decode_hlo.py [--new 8]   (writes decode_hlo.txt under $OUT or .)
"""
import collections
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from emjax.model import sampling as S  # noqa: E402
from emjax.model.config import preset  # noqa: E402
from emjax.model.schema import abstract_weights  # noqa: E402

cfg = preset("qwen2.5-14b-instruct")
B, P = 32, 32
new = int(sys.argv[sys.argv.index("--new") + 1]) if "--new" in sys.argv else 8
weights = abstract_weights(cfg)
fused = jax.eval_shape(S.fuse_qkv, weights.layers)
state, iv = S._prefill.eval_shape(weights, cfg, fused, jax.ShapeDtypeStruct((B, P), jnp.int32),
                                   jax.ShapeDtypeStruct((B, P), bool), jnp.arange(B, dtype=jnp.int32), None,
                                   jax.random.PRNGKey(0), jnp.arange(B, dtype=jnp.uint32), max_new_tokens=new)
txt = S._decode.lower(weights, cfg, fused, state, iv, jnp.asarray([-1], jnp.int32), cfg.vocab_size, jnp.int32(0), prompt_len=P,
                      temperature=1.0, top_k=0, top_p=1.0).compile().as_text()
open(os.path.join(os.environ.get("OUT", "."), "decode_hlo.txt"), "w").write(txt)
ops = collections.Counter(re.findall(r"= \S+ (copy|copy-start|dynamic-slice|dynamic-update-slice|concatenate|custom-call|fusion|while)\(", txt))
print(dict(ops))
for line in txt.splitlines():
    if re.search(r"= \S+ (copy|copy-start)\(", line):
        print(line.strip()[:220])
