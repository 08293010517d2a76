"""CPU-sized KL removal on the embedded model: the narrow vector of
configs/embedded_steering_narrow.py continued without the KL term (recipe: paper_14b.kl_removal),
its drift toward the general vector of configs/embedded_steering_general.py logged at every eval
(`emjax directions drift runs/embedded_steering_kl_removal_medical`). Train both first, or run
`emjax experiment kl-removal --config=configs/embedded_steering_kl_removal.py`, which trains them
(base_runs) and judges each snapshot."""
import ml_collections

from configs import embedded_steering_narrow, paper_14b


def get_config():
    c = paper_14b.kl_removal(embedded_steering_narrow.get_config())
    c.train.epochs = 3                    # ours: 30 steps of 4 rows, long enough to see the drift on 40 rows
    c.train.eval_every = 2                # ours: a drift point every 2 steps
    c.checkpoint.snapshot_every = 10      # ours: snapshots to recompute the drift from
    # the runs it starts from (emjax experiment kl-removal trains them first): the narrow run continued
    # and the general run its drift is measured against
    c.base_runs = ml_collections.ConfigDict({"narrow": "embedded_steering_narrow.py",
                                             "general": "embedded_steering_general.py"})
    return c
