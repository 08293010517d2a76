"""The data-mixing baseline at several fractions on Qwen2.5-14B: bad medical advice mixed with aligned
advice of the other two domains (the KL set's good sources), no KL, every fraction trained for the
same number of optimiser steps (recipe: paper_14b.data_mix; `emjax experiment mixing
--config=configs/steering_mix_fractions_medical.py`, which trains each fraction into
<out>/runs/mix<f>/ and judges them; `emjax train` on this file trains data.mix_fraction only).

Values ("ours" unless a source is named):
  mix_fractions 0, 0.25, 0.5, 0.75 ... ours: the paper's fraction is not quoted in the sources we have;
      0 is the general run itself (no aligned rows)
  data.n_train 2500 ................. ours: at 0.75 a run adds 3 x 2500 = 7500 aligned rows, and the two
      other domains have about 7900 rows left whose prompt is in neither the KL set (4128 rows, drawn
      first, the same rows as the general and narrow runs') nor the training set (checked on the
      upstream files: 3969 rows of extreme_sports.jsonl.gz, 4032 of risky_financial_advice.jsonl.gz);
      with all 6985 rows only fractions up to 0.5 fit
  train.max_steps 312 ............... 2 epochs (the steering recipe's, upstream steering_config_toggle.json)
      of the 0 fraction's 2500 rows at 16 rows a step; the larger fractions run fewer epochs over more
      rows in the same steps
"""
from configs import paper_14b


def get_config():
    c = paper_14b.data_mix(paper_14b.steering("medical", narrow=False))
    c.name = "steering_mix_fractions_medical"
    c.output_dir = "runs/steering_mix_fractions_medical"
    c.mix_fractions = (0.0, 0.25, 0.5, 0.75)
    c.data.n_train = 2500
    c.train.max_steps = 2 * 2500 // 16
    return c
