"""Paper run: rank-1 LoRA on down_proj of layer 24, alpha 512, narrow solution (SFT + KL on the other domains),
sports (recipe: paper_14b.lora_single)."""
from configs import paper_14b


def get_config():
    return paper_14b.lora_single("sports", narrow=True, rank=1)
