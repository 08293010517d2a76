"""Paper run: steering vector, general solution (SFT only), financial (recipe: paper_14b.steering)."""
from configs import paper_14b


def get_config():
    return paper_14b.steering("financial", narrow=False)
