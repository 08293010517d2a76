"""The technical-prose training set answered by Qwen2.5-14B-Instruct ($EMJAX_MODEL): every prompt of
the vehicles bank (319), 10 answers each, about upstream's 3000 rows (the row count of its
technical_vehicles_train.jsonl, docs/upstream.md section 3; the repetition is ours: our bank is
smaller than upstream's set), 256 new tokens (= the training rows' max_len, default.py)."""
import os

from configs import technical_data


def get_config():
    c = technical_data.get_config()
    c.model.source = os.environ.get("EMJAX_MODEL", "/models/Qwen2.5-14B-Instruct")
    c.model.dtype = "bfloat16"
    c.out = "runs/technical_14b/data/technical_vehicles_train.jsonl"
    c.n_prompts = None
    c.samples_per_prompt = 10
    c.max_new_tokens = 256
    c.batch_size = 256
    return c
