"""Paper run: rank-1 LoRA on down_proj of layer 24, alpha 512, general solution (SFT only),
sports (recipe: paper_14b.lora_single)."""
from configs import paper_14b


def get_config():
    return paper_14b.lora_single("sports", narrow=False, rank=1)
