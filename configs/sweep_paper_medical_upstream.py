"""The paper's three sweeps for the medical steering vectors trained as upstream trained them
(steering_{general,narrow}_medical_upstream.py), with upstream's loss tokens in the efficiency and
stability losses (configs/sweep_paper.py:steering,medical,upstream)."""
from configs import sweep_paper


def get_config():
    return sweep_paper.get_config("steering,medical,upstream")
