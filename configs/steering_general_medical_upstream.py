"""steering_general_medical.py as upstream's steering trainer ran it, defects included: every token of the
conversation in the SFT loss and the vector on row 0 of each micro-batch (recipe: paper_14b.as_upstream).
For the other domains: paper_14b.as_upstream(paper_14b.steering(DOMAIN, narrow)), or the overrides
--config.data.loss_tokens=all --config.intervention.steer_rows=first."""
from configs import paper_14b


def get_config():
    return paper_14b.as_upstream(paper_14b.steering("medical", narrow=False))
