"""The EM baseline: rank-32 LoRA on every projection of every layer, sports (recipe: paper_14b.em_baseline)."""
from configs import paper_14b


def get_config():
    return paper_14b.em_baseline("sports")
