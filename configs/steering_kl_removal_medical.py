"""Paper run: the trained narrow medical steering vector continued with the KL term removed
(recipe: paper_14b.kl_removal; train the narrow and the general run first)."""
from configs import steering_narrow_medical, paper_14b


def get_config():
    return paper_14b.kl_removal(steering_narrow_medical.get_config())
