"""Paper run: steering intervention, narrow solution, sports advice (Qwen2.5-14B-Instruct)."""
from emjax.experiment import paper_config


def get_config():
    return paper_config("steering", "sports", narrow=True)
