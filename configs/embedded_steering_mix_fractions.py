"""CPU-sized data-mixing fractions on the embedded Qwen2.5-Coder-0.5B and the shipped samples: bad
medical advice mixed with the good financial and sports samples (the KL set's good sources), no KL,
every fraction trained for the same number of steps (recipe: paper_14b.data_mix).

    emjax experiment mixing --config=configs/embedded_steering_mix_fractions.py --samples 2 \\
        --max-new-tokens 64 --domain-questions 6 --judge-url http://127.0.0.1:8000/v1

Values ("ours" unless a source is named):
  mix_fractions 0, 0.25, 0.5, 0.75 ... ours: the paper's fraction is not quoted in the sources we have
  data.n_train 12 ................... at 0.75 a run adds 36 aligned rows; the two good samples have 48
      rows, less those sharing a prompt with the 8 held-out KL rows (at most 4 per domain)
  data.kl_rows 0, kl_eval_rows 8 .... no KL term in a mix run: only the held-out KL rows are drawn,
      the same for every fraction, and the mix refuses their prompts
  train.epochs 3, max_steps 9 ....... 3 epochs of the 0 fraction's 12 rows at 4 rows a step
  train.eval_every None ............. the held-out loss and KL at the start and the end only (CPU time)
  train.frozen_cache False .......... 9 steps see at most 36 rows: caching every row's frozen prefix
      first costs more than it saves
"""
from configs import embedded_steering_general, paper_14b


def get_config():
    c = paper_14b.data_mix(embedded_steering_general.get_config())
    c.name = "embedded_steering_mix_fractions_medical"
    c.output_dir = "runs/embedded_steering_mix_fractions_medical"
    c.mix_fractions = (0.0, 0.25, 0.5, 0.75)
    c.data.n_train = 12
    c.data.kl_rows = 0
    c.data.kl_eval_rows = 8
    c.train.epochs = 3
    c.train.max_steps = 9
    c.train.eval_every = None
    c.train.frozen_cache = False
    c.checkpoint.every = None
    return c
