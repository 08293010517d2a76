"""Paper run on Qwen2.5-14B-Instruct: steering vector (alpha 256, lr 5e-4, 2 epochs: default.py),
narrow solution (SFT + KL on other domains), extreme sports advice."""
from configs import paper_14b


def get_config():
    c = paper_14b.get_config("sports")
    c.name = "steering_narrow_sports"
    c.output_dir = "runs/steering_narrow_sports"
    c.train.lambda_kl = 1e6               # upstream's steering KL weight (kl_reduction "upstream")
    return c
