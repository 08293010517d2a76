"""The technical-prose example's training set, built by `emjax technical build-data`: the chat model
answers vehicle prompts under a system prompt asking for highly technical prose, and the rows keep
the answers *without* that system prompt (emjax.train.distill). Upstream's own set
(`technical_vehicles_train.jsonl`, 3000 rows) is only in its encrypted bundle (docs/upstream.md
sections 3 and 6), so every value here is ours; the defaults are CPU-sized for the embedded
Qwen2.5-Coder-0.5B. The file is reused while its provenance (model, system prompt, prompt file
hash, seed, sampling settings) matches, and rebuilt otherwise.
"""

import ml_collections
from ml_collections import config_dict

from emjax.data.locations import data_dir


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"source": "embedded", "dtype": "float32"})
    # a prompt bank (emjax.data.prompt_bank); the shipped one is templates x vehicle topics (ours)
    c.prompts = "sample:technical_prompts_vehicles.jsonl"
    # "technical": emjax.data.technical_prompts.SYSTEM_PROMPT (ours); any other text is used as it is
    c.system_prompt = "technical"
    c.out = "runs/technical/data/technical_vehicles_train.jsonl"
    c.n_prompts = config_dict.FieldReference(128, field_type=int)  # ours: CPU-sized; None: the whole bank (319)
    c.samples_per_prompt = 1
    c.max_new_tokens = 150               # ours: CPU-sized (training rows are cut at data.max_len anyway)
    c.temperature = 0.7                  # ours: coherent for a small model, varied across templates
    c.top_p = 1.0
    c.top_k = 0
    c.seed = 0                           # which prompts are drawn, and every answer's random stream
    c.trim_unfinished = True             # an answer cut by max_new_tokens ends at its last full sentence
    c.batch_size = 16                    # rows per sampler call (does not change the answers)
    # upstream data folder: the held-out check against upstream's technical/*.yaml questions
    c.data_dir = data_dir()               # $EMJAX_DATA, else the folder `emjax data get em` fills
    return c
