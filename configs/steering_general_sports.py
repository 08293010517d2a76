"""Paper run: steering vector, general solution (SFT only), sports (recipe: paper_14b.steering)."""
from configs import paper_14b


def get_config():
    return paper_14b.steering("sports", narrow=False)
