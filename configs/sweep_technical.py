"""The three sweeps for the technical-prose example's general and narrow steering vectors on the
embedded model (CPU-sized, as sweep_embedded.py): losses on the distilled technical vehicle rows.

Train them first: emjax train --config=configs/technical_steering_general.py (and _narrow)."""
from configs import sweep_embedded


def get_config():
    c = sweep_embedded.get_config()
    c.name = "technical"
    c.output_dir = "runs/technical/sweeps"
    c.interventions = ("general=runs/technical/technical_steering_general/steering.safetensors,"
                       "narrow=runs/technical/technical_steering_narrow/steering.safetensors")
    c.data.train = "runs/technical/data/technical_vehicles_train.jsonl"
    return c
