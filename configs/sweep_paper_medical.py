"""The three sweeps of the paper for the Qwen2.5-14B-Instruct medical steering vectors
(upstream settings, sweep_default.py: 100 training rows, 12 eps x 10 seeds, 50 FineWeb documents
of 2000 characters, 512 tokens)."""
import os

from configs import sweep_default


def get_config():
    c = sweep_default.get_config()
    c.name = "paper_medical_steering"
    c.output_dir = "runs/sweeps_paper_medical"
    c.model.source = os.environ.get("EMJAX_MODEL", "/models/Qwen2.5-14B-Instruct")
    c.model.dtype = "bfloat16"
    c.interventions = ("general=runs/steering_general_medical/steering.safetensors,"
                       "narrow=runs/steering_narrow_medical/steering.safetensors")
    c.data.train = "bad_medical_advice.jsonl.gz"
    c.loss_chunk = 64
    c.chunk = 8
    return c
