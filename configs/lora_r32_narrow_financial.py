"""Paper run: lora_r32 intervention, narrow solution, financial advice (Qwen2.5-14B-Instruct)."""
from emjax.experiment import paper_config


def get_config():
    return paper_config("lora_r32", "financial", narrow=True)
