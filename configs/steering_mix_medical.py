"""The data-mixing baseline: bad medical advice mixed with aligned advice of the other domains, no KL
(recipe: paper_14b.data_mix)."""
from configs import steering_general_medical, paper_14b


def get_config():
    return paper_14b.data_mix(steering_general_medical.get_config())
