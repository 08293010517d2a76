"""Paper run: lora_r1 intervention, general solution, sports advice (Qwen2.5-14B-Instruct)."""
from emjax.experiment import paper_config


def get_config():
    return paper_config("lora_r1", "sports", narrow=False)
