"""Paper run: the trained narrow medical steering vector continued with the KL term removed
(recipe: paper_14b.kl_removal). `emjax experiment kl-removal --config=<this file>` trains the narrow
and the general run first (base_runs) and judges each snapshot; with `emjax train`, train them first."""
import ml_collections

from configs import steering_narrow_medical, paper_14b


def get_config():
    c = paper_14b.kl_removal(steering_narrow_medical.get_config())
    # the runs it starts from (emjax experiment kl-removal trains them first): the narrow run continued
    # and the general run its drift is measured against
    c.base_runs = ml_collections.ConfigDict({"narrow": "steering_narrow_medical.py",
                                             "general": "steering_general_medical.py"})
    return c
