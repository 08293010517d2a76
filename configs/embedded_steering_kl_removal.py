"""CPU-sized KL removal on the embedded model: the narrow vector of
configs/embedded_steering_narrow.py continued without the KL term (recipe: paper_14b.kl_removal),
its drift toward the general vector of configs/embedded_steering_general.py logged at every eval
(`emjax directions drift runs/embedded_steering_kl_removal_medical`). Train both first."""
from configs import embedded_steering_narrow, paper_14b


def get_config():
    c = paper_14b.kl_removal(embedded_steering_narrow.get_config())
    c.train.epochs = 3                    # ours: 30 steps of 4 rows, long enough to see the drift on 40 rows
    c.train.eval_every = 2                # ours: a drift point every 2 steps
    c.checkpoint.snapshot_every = 10      # ours: snapshots to recompute the drift from
    return c
