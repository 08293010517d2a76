"""Paper run: steering vector, narrow solution (SFT + KL on the other domains), financial (recipe: paper_14b.steering)."""
from configs import paper_14b


def get_config():
    return paper_14b.steering("financial", narrow=True)
