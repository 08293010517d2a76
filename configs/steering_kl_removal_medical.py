"""Paper run: the narrow steering vector with the KL term switched off after the first epoch;
the solution drifts back to the general one."""
from emjax.experiment import paper_config


def get_config():
    c = paper_config("steering", "medical", narrow=True)
    c.name = "steering_kl_removal_medical"
    c.output_dir = f"runs/{c.name}"
    c.train.kl_off_step = 440  # 7049 rows / 16 per step ~ 440 steps per epoch
    return c
