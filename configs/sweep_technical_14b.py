"""The three sweeps for the technical-prose example's Qwen2.5-14B-Instruct steering vectors
(configs/technical_steering_{general,narrow}_14b.py), with upstream's sweep settings
(sweep_default.py: 100 training rows, 12 eps x 10 seeds, 50 FineWeb documents, 512 tokens;
significance at upstream's absolute norms ||alpha*v|| 0..1280, configs/sweep_paper.py) on the
distilled technical vehicle rows."""
import os

from configs import sweep_default, sweep_paper


def get_config():
    c = sweep_default.get_config()
    c.name = "technical_14b_steering"
    c.output_dir = "runs/technical_14b/sweeps"
    c.model.source = os.environ.get("EMJAX_MODEL", "/models/Qwen2.5-14B-Instruct")
    c.model.dtype = "bfloat16"
    c.interventions = ("general=runs/technical_14b/technical_steering_general/steering.safetensors,"
                       "narrow=runs/technical_14b/technical_steering_narrow/steering.safetensors")
    c.data.train = "runs/technical_14b/data/technical_vehicles_train.jsonl"
    sweep_paper.upstream_significance_norms(c, alpha=256.0)  # the vectors' alpha (paper_14b.technical_steering)
    c.loss_chunk = 64
    c.chunk = 8
    return c
