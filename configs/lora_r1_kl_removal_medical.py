"""Paper run: the trained narrow medical rank-1 LoRA continued with the KL term removed
(recipe: paper_14b.kl_removal; train the narrow and the general run first)."""
from configs import lora_r1_narrow_medical, paper_14b


def get_config():
    return paper_14b.kl_removal(lora_r1_narrow_medical.get_config())
