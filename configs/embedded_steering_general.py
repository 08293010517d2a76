"""CPU-sized general steering run on the embedded Qwen2.5-Coder-0.5B and the shipped samples
(SFT only); emjax main trains the same vector for fewer steps."""
from configs import default


def get_config():
    c = default.get_config()
    c.name = "embedded_steering_general_medical"
    c.output_dir = "runs/embedded_steering_general_medical"
    c.train.grad_accum = 2                # 4 rows per step: the sample has 40 training rows
    c.train.eval_every = 5
    c.train.lambda_kl = 0.0
    c.checkpoint.every = 10
    return c
