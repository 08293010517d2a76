"""Paper run: rank-32 LoRA on down_proj of layer 24, narrow solution, medical (recipe: paper_14b.lora)."""
from configs import paper_14b


def get_config():
    return paper_14b.lora("medical", narrow=True, rank=32)
