"""The three sweeps for the embedded model's general and narrow steering vectors (CPU-sized).

Train them first: emjax train --config=configs/embedded_steering_general.py (and _narrow)."""
from configs import sweep_default


def get_config():
    c = sweep_default.get_config()
    c.name = "embedded_medical"
    c.output_dir = "runs/sweeps_embedded"
    c.data.n_rows = 16
    c.loss_chunk = 32
    c.stability.seeds = 4
    c.stability.eps = (0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
    c.significance.n_docs = 16
    c.significance.max_len = 256
    c.significance.norms = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
    c.significance.n_random = 3
    return c
