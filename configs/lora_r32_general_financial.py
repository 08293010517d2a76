"""Paper run: rank-32 LoRA on the seven projections of every layer (upstream kl_regularized_config.json),
general solution (SFT only), financial (recipe: paper_14b.lora_all)."""
from configs import paper_14b


def get_config():
    return paper_14b.lora_all("financial", narrow=False)
