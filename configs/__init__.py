"""emjax experiment configs (ml-collections). Start with `default.py`: every field of a training run
with its meaning. Each other file is a short list of overrides on top of it (or of
`paper_14b.py` / `sweep_default.py`), so a run's values are visible in two files at most; a file for
a family of runs (paper_14b.py, sweep_paper.py, gemma_9b.py) takes the run after a colon. An
installed emjax ships this folder as `emjax.configs` (setup.py; emjax.configuration.shipped_config).

    emjax train --config=configs/paper_14b.py:steering,narrow,medical --config.train.lr=1e-4
"""
