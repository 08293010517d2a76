"""Paper run: the narrow medical steering vector with the KL term switched off after the first
epoch (upstream's KL-removal experiment); the solution drifts back toward the general one."""
from configs import steering_narrow_medical


def get_config():
    c = steering_narrow_medical.get_config()
    c.name = "steering_kl_removal_medical"
    c.output_dir = "runs/steering_kl_removal_medical"
    c.train.kl_off_step = 440  # ~ one epoch: 7049 rows / 16 rows per step
    return c
