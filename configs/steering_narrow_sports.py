"""Paper run: steering vector, narrow solution (SFT + KL on the other domains), sports (recipe: paper_14b.steering)."""
from configs import paper_14b


def get_config():
    return paper_14b.steering("sports", narrow=True)
