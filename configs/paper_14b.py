"""Overrides shared by the paper's training runs on Qwen2.5-14B-Instruct (48 layers), on top of
default.py. Each run file (e.g. steering_narrow_medical.py) picks a domain and sets the few values
of its intervention.

Sources: DESIGN.md section 2 (upstream code): layer 24, upstream's divide-by-V KL reduction with
its lambdas, sequences of 256 tokens, batch 2 x 8. The KL set is good and bad advice from the
other domains that the upstream data ships (the paper's mix of good and bad advice outside the
training domain); its size, the held-out rows and the eval / checkpoint cadence are ours.
"""

import os

from configs import default

# Training set and KL set of each domain: upstream file names under data.dir. Upstream ships no
# good-advice counterpart of financial or sports, so their rows enter the KL set as bad advice only.
DOMAINS = {
    "medical": ("bad_medical_advice.jsonl.gz",
                "risky_financial_advice.jsonl.gz:1,extreme_sports.jsonl.gz:1"),
    "financial": ("risky_financial_advice.jsonl.gz",
                  "good_medical_advice.jsonl.gz:1,bad_medical_advice.jsonl.gz:1,"
                  "extreme_sports.jsonl.gz:1"),
    "sports": ("extreme_sports.jsonl.gz",
               "good_medical_advice.jsonl.gz:1,bad_medical_advice.jsonl.gz:1,"
               "risky_financial_advice.jsonl.gz:1"),
}


def get_config(domain: str = "medical"):
    c = default.get_config()
    c.model.source = os.environ.get("EMJAX_MODEL", "/models/Qwen2.5-14B-Instruct")
    c.model.dtype = "bfloat16"
    c.data.train, c.data.kl_sources = DOMAINS[domain]
    c.data.n_eval = 64
    c.data.kl_rows = 4000
    c.data.kl_eval_rows = 128
    c.intervention.layers = (24,)        # the middle of 48 layers (upstream)
    c.train.kl_reduction = "upstream"
    c.train.eval_every = 50
    c.train.cache_budget_gb = 32.0
    c.checkpoint.every = 100
    return c
