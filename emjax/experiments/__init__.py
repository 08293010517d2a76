"""The paper's experiments that chain several stages: data mixing at several fractions
(`emjax.experiments.mixing`) and KL removal with behaviour (`emjax.experiments.kl_removal`), both
judged through `emjax.experiments.behaviour`. Each runs as `emjax experiment <name> --config=...`
into one folder, stage by stage, and a rerun reuses the finished stages."""

from emjax.errors import EmjaxError


class ExperimentConfigError(EmjaxError, ValueError):
    """An experiment config that cannot run; the message names the key."""
