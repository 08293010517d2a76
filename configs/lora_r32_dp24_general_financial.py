"""Rank-32 LoRA on down_proj of layer 24 only, general solution (SFT only), financial (recipe: paper_14b.lora_single).
Layer and module: the paper's table as third parties quote it ("MLP down_proj, layer 24"); upstream's
rank-32 object (all projections, all layers) is lora_r32_general_financial.py."""
from configs import paper_14b


def get_config():
    return paper_14b.lora_single("financial", narrow=False, rank=32)
