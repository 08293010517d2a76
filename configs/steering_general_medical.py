"""Paper run: steering vector, general solution (SFT only), medical (recipe: paper_14b.steering)."""
from configs import paper_14b


def get_config():
    return paper_14b.steering("medical", narrow=False)
