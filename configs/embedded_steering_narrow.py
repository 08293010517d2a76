"""CPU-sized narrow steering run on the embedded Qwen2.5-Coder-0.5B and the shipped samples
(SFT + KL on financial and sports advice); emjax main trains the same vector for fewer steps."""
from configs import default


def get_config():
    c = default.get_config()
    c.name = "embedded_steering_narrow_medical"
    c.output_dir = "runs/embedded_steering_narrow_medical"
    c.intervention.init_seed = 1000       # narrow runs start from their own init (steering: zeros anyway)
    c.train.grad_accum = 2                # 4 rows per step: the sample has 40 training rows
    c.train.eval_every = 5
    c.train.lambda_kl = 3.0               # ours: token-mean KL in nats (not upstream's divide-by-V scale)
    c.checkpoint.every = 10
    return c
