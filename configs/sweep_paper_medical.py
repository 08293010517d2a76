"""The paper's three sweeps for the Qwen2.5-14B-Instruct medical steering vectors
(configs/sweep_paper.py:steering,medical; its docstring lists every value and its source)."""
from configs import sweep_paper


def get_config():
    return sweep_paper.get_config("steering,medical")
