"""Paper run: rank-1 LoRA on down_proj of layer 24, general solution, sports (recipe: paper_14b.lora)."""
from configs import paper_14b


def get_config():
    return paper_14b.lora("sports", narrow=False, rank=1)
