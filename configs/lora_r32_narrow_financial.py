"""Paper run: rank-32 LoRA on the seven projections of every layer (upstream kl_regularized_config.json),
narrow solution (SFT + KL on the other domains), financial (recipe: paper_14b.lora_all)."""
from configs import paper_14b


def get_config():
    return paper_14b.lora_all("financial", narrow=True)
