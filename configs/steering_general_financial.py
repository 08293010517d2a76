"""Paper run: steering intervention, general solution, financial advice (Qwen2.5-14B-Instruct)."""
from emjax.experiment import paper_config


def get_config():
    return paper_config("steering", "financial", narrow=False)
