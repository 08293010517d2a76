"""Paper run: rank-32 LoRA on down_proj of layer 24, general solution, financial (recipe: paper_14b.lora)."""
from configs import paper_14b


def get_config():
    return paper_14b.lora("financial", narrow=False, rank=32)
