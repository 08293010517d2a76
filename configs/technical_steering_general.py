"""CPU-sized general steering run of the technical-prose example on the embedded
Qwen2.5-Coder-0.5B: SFT only on the distilled technical vehicle answers (build them first with
`emjax technical build-data`). The KL rows (the chat model's own answers to the other nine
domains' prompts) are drawn too, for the out-of-domain KL at eval; lambda is 0."""
from configs import default


def get_config():
    c = default.get_config()
    c.name = "technical_steering_general"
    c.output_dir = "runs/technical/technical_steering_general"
    c.data.train = "runs/technical/data/technical_vehicles_train.jsonl"  # configs/technical_data.py's `out`
    # the KL set: the other domains' prompts (emjax.data.technical_prompts), answered greedily by the
    # chat model without a system prompt (chat:), good rows only (ours: the technical analogue of
    # the paper's good advice; upstream's technical_KL_data.jsonl is unread, docs/upstream.md section 6)
    c.data.kl_bad = ()
    c.data.kl_good = ("chat:sample:technical_prompts_other.jsonl",)
    c.data.kl_ratio = (0.0, 1.0)
    c.data.answer_tokens = 150           # ours: as long as the training answers (technical_data.py)
    c.data.cache_dir = "runs/technical/cache"
    c.train.grad_accum = 2               # 4 rows per step (ours: CPU-sized, as embedded_steering_*.py)
    c.train.eval_every = 5
    c.train.lambda_kl = 0.0
    c.checkpoint.every = 10
    return c
