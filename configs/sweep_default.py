"""Every field of the three metric sweeps (`emjax sweep {efficiency,stability,significance,all}`),
with its meaning and source. Defaults: the embedded model's general and narrow steering vectors as
`emjax train --config=configs/embedded_steering_{general,narrow}.py` writes them.

Sources: "upstream" is the code of Soligo et al. as summarised in docs/upstream.md section 1; "ours"
marks emjax's own choice.
"""

import ml_collections
import numpy as np
from ml_collections import config_dict

from emjax.data.locations import data_dir, fineweb_corpus


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "sweep"                     # names the run in the tables
    c.output_dir = "runs/sweeps"         # {kind}.parquet / .csv / .png / _summary.json
    c.model = ml_collections.ConfigDict({"source": "embedded", "dtype": "float32"})
    # Device mesh (emjax.model.mesh_plan): None one device; "auto" data parallel when the weights fit
    # one device, else FSDP over as few as make them fit; or explicit "data:2,fsdp:4". The sweep axis
    # goes on `data` when it divides, otherwise the rows of each batch do (ours).
    c.mesh = config_dict.placeholder(str)
    # "label=path,...": steering .safetensors files or PEFT LoRA folders
    c.interventions = ("general=runs/embedded_steering_general_medical/steering.safetensors,"
                       "narrow=runs/embedded_steering_narrow_medical/steering.safetensors")
    c.data = ml_collections.ConfigDict()
    c.data.dir = data_dir()               # $EMJAX_DATA, else the folder `emjax data get em` fills
    c.data.train = "sample:bad_medical"  # the training rows the losses are measured on
    c.data.n_rows = 100                  # upstream: 100 training rows
    c.data.seed = 42                     # upstream: seed 42
    c.data.max_len = 256
    # tokens the losses are taken on: "assistant" (ours: the assistant turns, as training) or "all" (every
    # token after the first: upstream stability/utils.py masks only up to the first newline token, which
    # for Qwen's template is the one after "<|im_start|>system", so its loss keeps system and user tokens)
    c.data.loss_tokens = "assistant"
    c.data.batch_size = 8                # rows per forward pass
    # Directional ablation during every sweep (ours, for the direction analyses): "SOURCE[@LAYERS]" as
    # `emjax generate --ablate` takes it (emjax.directions.sources.ablation_from_spec); the KL
    # reference stays the chat model without ablation. None: off.
    c.ablation = config_dict.placeholder(str)
    c.chunk = config_dict.placeholder(int)       # versions per vmap chunk; None: all at once
    c.loss_chunk = config_dict.placeholder(int)  # sequence chunk of the losses; None: whole rows

    # Norms are emjax.interventions.arithmetic.update_norm (ours; docs/upstream.md 5.2 for upstream's):
    # steering ||alpha·v|| (applied vector), LoRA ||scale·BA||_F (effective update, all modules and
    # layers). Rescaling multiplies v / B, so the update scales linearly.
    c.efficiency = ml_collections.ConfigDict()
    # steering: multiples of each trained norm (upstream steering_norm_rescaling_experiment: 9 points)
    c.efficiency.scales = tuple(np.round(np.linspace(0.0, 2.0, 9), 4).tolist())
    # LoRA: multiples of each trained norm, B scaled (upstream norm_rescaling_experiment: 21 factors
    # 0..2). Upstream's separate "B times factor" sweep is the same family of points here (ours: merged)
    c.efficiency.lora_scales = tuple(np.round(np.linspace(0.0, 2.0, 21), 4).tolist())
    c.efficiency.equal_norm = True       # also evaluate every intervention at the others' trained norms

    c.stability = ml_collections.ConfigDict()
    c.stability.eps = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # upstream: 12 values
    c.stability.seeds = 10               # upstream: 10 seeds
    # LoRA noise. "update" (ours, default): on the update scale·BA, B moved within the column space
    # of A, so ||scale·BA||_F is kept exactly, as the steering noise keeps ||alpha·v||. "per_matrix":
    # upstream stability/utils.py apply_orthogonal_perturbation (A and B each, own norms kept; the
    # update's norm is not). Steering noise is on v either way (upstream).
    c.stability.lora_noise = "update"

    c.significance = ml_collections.ConfigDict()
    # $EMJAX_FINEWEB, else the sample `emjax data get fineweb` wrote, else the 64 documents (first 2000
    # characters) shipped with emjax, "sample:fineweb" (emjax.data.locations.fineweb_corpus)
    c.significance.corpus = fineweb_corpus()
    c.significance.stream = False        # stream HuggingFaceFW/fineweb sample-10BT instead (needs internet)
    c.significance.n_docs = 50           # upstream: 50-100 documents
    c.significance.max_chars = 2000      # upstream: first 2000 characters
    c.significance.max_len = 512         # upstream: 512 tokens
    c.significance.seed = 42             # upstream: shuffle seed 42
    c.significance.norms = tuple(np.round(np.linspace(0.0, 2.0, 26), 4).tolist())  # upstream: 26 norms
    # norms are multiples of the largest trained update norm (ours); with norms_relative=False they are
    # absolute update norms: for steering ||alpha·v||, so upstream's ||v|| in 0..5 is 0..5*alpha here
    c.significance.norms_relative = True
    c.significance.n_random = 5          # norm-matched random vectors (upstream: random baselines)
    return c
