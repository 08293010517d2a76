"""emjax experiment configs (ml-collections). Start with `default.py`: every field of a training run
with its meaning. Each other file is a short list of overrides on top of it (or of
`paper_14b.py` / `sweep_default.py`), so a run's values are visible in two files at most.

    emjax train --config=configs/steering_narrow_medical.py --config.train.lr=1e-4
"""
