"""Paper run: lora_r1 intervention, narrow solution, medical advice (Qwen2.5-14B-Instruct)."""
from emjax.experiment import paper_config


def get_config():
    return paper_config("lora_r1", "medical", narrow=True)
