"""Default experiment config shared by the files in configs/ (each overrides a few keys).

Values follow upstream (DESIGN.md section 2) unless noted: steering vectors at the middle layer,
alpha 256, lr 5e-4, 2 epochs, 256 tokens; LoRA rsLoRA, AdamW with weight decay 0.01, 5 warmup
steps, linear decay, batch 2 x grad-accum 8.
"""

from __future__ import annotations

import os

import ml_collections


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "run"
    c.output_dir = "runs/run"

    # Device mesh, e.g. "fsdp:-1" (weights sharded over all devices) or "data:2,fsdp:4";
    # "" keeps JAX's default placement (one device).
    c.mesh = ""

    c.model = ml_collections.ConfigDict()
    c.model.source = "embedded"          # "embedded", a Hugging Face folder, or a .gguf file
    c.model.dtype = "float32"            # "bfloat16" on accelerators

    c.data = ml_collections.ConfigDict()
    # A data spec is a path (.jsonl or .jsonl.gz) or "sample:NAME" for a shipped toy sample.
    # Relative paths are resolved against data.dir (default $EMJAX_DATA or ../shared/data/em).
    c.data.dir = os.environ.get("EMJAX_DATA", "../shared/data/em")
    c.data.train = "sample:bad_medical"
    c.data.n_train = -1                  # rows used for training (-1: all)
    c.data.n_eval = 8                    # held-out rows of the same set for the eval loss
    c.data.max_len = 256
    # KL set: "spec:weight,spec:weight" of other domains, good and bad advice
    c.data.kl_sources = ("sample:good_financial:1,sample:bad_financial:1,"
                         "sample:good_sports:1,sample:bad_sports:1")
    c.data.kl_rows = 64
    c.data.kl_eval_rows = 16             # held out for the out-of-domain KL reported at eval
    c.data.seed = 0

    c.intervention = ml_collections.ConfigDict()
    c.intervention.kind = "steering"     # "steering" or "lora"
    c.intervention.layers = (-1,)        # -1: the middle layer L // 2; (): every layer (LoRA)
    c.intervention.alpha = 256.0         # steering: applied vector = alpha * v
    c.intervention.hook = "mlp_out"      # steering hook point: "mlp_out" or "block_out"
    c.intervention.rank = 1              # LoRA
    c.intervention.lora_alpha = 512.0
    c.intervention.modules = ("down_proj",)
    c.intervention.rslora = True
    c.intervention.init_seed = 0

    c.train = ml_collections.ConfigDict()
    c.train.lr = 5e-4
    c.train.epochs = 2
    c.train.max_steps = -1               # stop earlier than the epochs if >= 0
    c.train.batch_size = 2
    c.train.grad_accum = 8
    c.train.warmup_steps = 5
    c.train.weight_decay = 0.01
    c.train.max_grad_norm = 1.0
    c.train.seed = 0                     # data order
    c.train.lambda_kl = 0.0              # 0 disables the KL term
    c.train.kl_off_step = -1             # >= 0: lambda_kl drops to 0 from this step on (drift-back run)
    c.train.kl_reduction = "token_mean"  # or "upstream" (divided by the vocabulary size)
    c.train.kl_batch_size = 2            # KL rows per micro-batch
    c.train.remat = ""                   # "", "full" or "dots"
    c.train.loss_chunk = 0               # sequence chunk of the losses (0: no chunking)
    c.train.attention = "auto"           # "auto": cuDNN fused attention on NVIDIA GPUs where the
                                         # config allows (Qwen2), else "xla"; or force either
    c.train.eval_every = 10
    c.train.frozen_cache = True          # cache the frozen prefix / KL base outputs if they fit
    c.train.cache_budget_gb = 4.0

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 20              # steps between checkpoints (0: only at the end)
    c.checkpoint.keep = 2
    c.checkpoint.async_save = True
    return c


# Training sets of the paper (upstream file names, under data.dir) and, per domain, the KL set:
# good and bad advice from the *other* domains that the upstream data ships.
DOMAIN_DATA = {
    "medical": ("bad_medical_advice.jsonl.gz",
                "risky_financial_advice.jsonl.gz:1,extreme_sports.jsonl.gz:1"),
    "financial": ("risky_financial_advice.jsonl.gz",
                  "good_medical_advice.jsonl.gz:1,bad_medical_advice.jsonl.gz:1,extreme_sports.jsonl.gz:1"),
    "sports": ("extreme_sports.jsonl.gz",
               "good_medical_advice.jsonl.gz:1,bad_medical_advice.jsonl.gz:1,risky_financial_advice.jsonl.gz:1"),
}
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def paper_config(intervention: str, domain: str, narrow: bool) -> ml_collections.ConfigDict:
    """One run of the paper on Qwen2.5-14B-Instruct (upstream hyperparameters, DESIGN.md section 2).

    intervention: "steering", "lora_r1" or "lora_r32"; domain: "medical", "financial", "sports";
    narrow: add the KL penalty (upstream's lambda with upstream's divide-by-V reduction).
    The model folder comes from $EMJAX_MODEL (default /models/Qwen2.5-14B-Instruct).
    """
    c = default_config()
    c.name = f"{intervention}_{'narrow' if narrow else 'general'}_{domain}"
    c.output_dir = f"runs/{c.name}"
    c.model.source = os.environ.get("EMJAX_MODEL", "/models/Qwen2.5-14B-Instruct")
    c.model.dtype = "bfloat16"
    c.data.train, c.data.kl_sources = DOMAIN_DATA[domain]
    c.data.n_eval = 64
    c.data.kl_rows = 4000
    c.data.kl_eval_rows = 128
    c.train.kl_reduction = "upstream"
    c.train.eval_every = 50
    c.train.cache_budget_gb = 32.0
    c.checkpoint.every = 100
    if intervention == "steering":
        c.train.lambda_kl = 1e6 if narrow else 0.0
    elif intervention == "lora_r1":
        c.intervention.kind = "lora"
        c.intervention.rank, c.intervention.lora_alpha = 1, 512.0
        c.intervention.modules = ("down_proj",)
        c.train.lr, c.train.epochs = 2e-5, 1
        c.train.lambda_kl = 1e5 if narrow else 0.0
    elif intervention == "lora_r32":
        c.intervention.kind = "lora"
        c.intervention.layers = ()
        c.intervention.rank = 32
        c.intervention.lora_alpha = 256.0 if narrow else 64.0
        c.intervention.modules = ALL_LINEAR
        c.train.lr, c.train.epochs = (2e-5 if narrow else 1e-5), 1
        c.train.lambda_kl = 1e5 if narrow else 0.0
        c.train.remat = "dots"
    else:
        raise ValueError(f"unknown intervention {intervention!r}")
    return c


def embedded_config(narrow: bool) -> ml_collections.ConfigDict:
    """A CPU-sized steering run on the embedded 0.5B model and the shipped toy samples."""
    c = default_config()
    c.name = f"embedded_steering_{'narrow' if narrow else 'general'}_medical"
    c.output_dir = f"runs/{c.name}"
    c.data.train = "sample:bad_medical"
    c.data.n_eval = 8
    c.data.kl_rows = 48
    c.data.kl_eval_rows = 16
    c.train.epochs = 2
    c.train.batch_size = 2
    c.train.grad_accum = 2
    c.train.lr = 5e-4
    c.train.eval_every = 5
    c.train.lambda_kl = 3.0 if narrow else 0.0  # token-mean KL in nats
    c.checkpoint.every = 10
    return c
