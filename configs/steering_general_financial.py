"""Paper run on Qwen2.5-14B-Instruct: steering vector (alpha 256, lr 5e-4, 2 epochs: default.py),
general solution (SFT only), risky financial advice."""
from configs import paper_14b


def get_config():
    c = paper_14b.get_config("financial")
    c.name = "steering_general_financial"
    c.output_dir = "runs/steering_general_financial"
    return c
