"""CPU-sized narrow steering run of the technical-prose example on the embedded
Qwen2.5-Coder-0.5B: SFT on the distilled technical vehicle answers + KL on the chat model's own
answers to the other nine domains' prompts."""
from configs import technical_steering_general


def get_config():
    c = technical_steering_general.get_config()
    c.name = "technical_steering_narrow"
    c.output_dir = "runs/technical/technical_steering_narrow"
    c.intervention.init_seed = 1000       # narrow runs start from their own init (steering: zeros anyway)
    c.train.lambda_kl = 3.0               # ours: token-mean KL in nats, as embedded_steering_narrow.py
    return c
