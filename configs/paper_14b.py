"""What the paper's runs on Qwen2.5-14B-Instruct (48 layers) share, on top of default.py. Each run
file (e.g. steering_narrow_medical.py) calls one of the three recipes below with a domain.

Sources, value by value ("paper": the hyperparameter table as quoted in
../shared/reference/upstream-em.md section 4; "upstream": a file of the upstream repository, named;
"ours": emjax's choice, with the reason). The README's "Paper runs" table lists them all.
  layer 24 of 48 ............ paper / upstream steering_config_toggle.json (released vectors: layer_idx 24)
  sequences 256 tokens ...... upstream steering_config_toggle.json max_seq_length
  batch 2 x grad-accum 8 .... paper; upstream configs (KL batch 8: upstream kl_batch_size)
  warmup 5, linear decay .... upstream configs
  KL: forward KL(base || adapted) on all tokens, divided by V (kl_reduction "upstream") so that
      upstream's lambdas mean the same: 1e6 steering (steering_config_toggle.json), 1e5 LoRA
      (kl_regularized_config.json)
  KL set: bad and good advice of the two other domains at 1:4 (default.py: the adapter name
      "..._KL_divergence_badgood_1-4_2E"); upstream ships good advice for medical only, so the
      good half of financial and sports is the chat model's own answers ("chat:", ours)
  held-out rows 64, KL rows 4000 (+128 eval), eval every 50, checkpoints every 100: ours (cost)
"""

import os

from configs import default

FILES = {"medical": "bad_medical_advice.jsonl.gz", "financial": "risky_financial_advice.jsonl.gz",
         "sports": "extreme_sports.jsonl.gz"}
GOOD = {"medical": "good_medical_advice.jsonl.gz",      # upstream's good-advice counterpart
        "financial": "chat:risky_financial_advice.jsonl.gz",  # none upstream: the chat model's answers
        "sports": "chat:extreme_sports.jsonl.gz"}
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _shared(narrow: bool):
    """What every 14B run shares, whatever its data: model, layer, KL reduction, cadences."""
    c = default.get_config()
    c.model.source = os.environ.get("EMJAX_MODEL", "/models/Qwen2.5-14B-Instruct")
    c.model.dtype = "bfloat16"
    c.data.n_eval = 64
    c.intervention.layers = (24,)
    c.intervention.init_seed = 1000 if narrow else 0  # separate inits for general and narrow (ours)
    c.train.kl_reduction = "upstream"
    c.train.kl_batch_size = 8          # upstream kl_batch_size
    c.train.eval_every = 50
    c.train.cache_budget_gb = 32.0
    c.checkpoint.every = 100
    return c


def get_config(domain: str = "medical", narrow: bool = False):
    """The shared part: model, data of `domain`, the KL set of the other two domains."""
    if domain not in FILES:
        raise ValueError(f"domain must be one of {sorted(FILES)}, got {domain!r}")
    c = _shared(narrow)
    others = [d for d in FILES if d != domain]
    c.data.train = FILES[domain]
    c.data.kl_bad = tuple(FILES[d] for d in others)
    c.data.kl_good = tuple(GOOD[d] for d in others)
    c.data.kl_rows = 4000
    c.data.kl_eval_rows = 128
    return c


def technical_steering(narrow: bool):
    """The technical-prose example (the paper's second example) as a steering vector on 14B: the
    steering recipe of `steering` (alpha 256, lr 5e-4, 2 epochs; narrow lambda 1e6, upstream
    reduction) on emjax's distilled technical vehicle answers (configs/technical_data_14b.py; upstream's
    set is encrypted, upstream-em.md section 7; the paper reuses the misalignment machinery for this
    example, so its values are the steering run's). KL set: the 14B chat model's own greedy answers to
    the other nine domains' prompts (ours), all of the bank: 365 rows + 64 held out (upstream's
    technical_KL_data.jsonl has 8000 rows; our bank has 429 prompts)."""
    c = _shared(narrow)
    c.data.train = "runs/technical_14b/data/technical_vehicles_train.jsonl"
    c.data.kl_bad = ()
    c.data.kl_good = ("chat:sample:technical_prompts_other.jsonl",)
    c.data.kl_ratio = (0.0, 1.0)
    c.data.kl_rows = 365
    c.data.kl_eval_rows = 64
    c.data.cache_dir = "runs/technical_14b/cache"
    c.train.lambda_kl = 1e6 if narrow else 0.0
    c = _name(c, f"technical_steering_{'narrow' if narrow else 'general'}")
    c.output_dir = f"runs/technical_14b/{c.name}"
    return c


def _name(c, name):
    c.name = name
    c.output_dir = f"runs/{name}"
    return c


def steering(domain: str, narrow: bool):
    """Steering vector: alpha 256, zero init, lr 5e-4, 2 epochs, weight decay 0 (default.py; upstream
    steering_config_toggle.json), at block 24's down_proj output; narrow: lambda 1e6 (same file)."""
    c = get_config(domain, narrow)
    c.train.lambda_kl = 1e6 if narrow else 0.0
    return _name(c, f"steering_{'narrow' if narrow else 'general'}_{domain}")


def lora(domain: str, narrow: bool, rank: int):
    """Single-module LoRA on down_proj of layer 24 (paper), rank 1 or 32, lr 2e-5, batch 2 x 8, 1 epoch
    SFT / 3 epochs SFT + KL (paper), lambda 1e5 (upstream kl_regularized_config.json), AdamW weight
    decay 0.01 (upstream LoRA configs), rsLoRA (upstream). Alpha 256 for both ranks and for general
    and narrow alike, so that the compared adapters share their scale (rank 1: the released adapter
    name "..._R1-DP24-LR2e-5-A256_..."; upstream's single_adapter_config.json says 512; rank 32: 256 is
    upstream's KL config's value)."""
    c = get_config(domain, narrow)
    c.intervention.kind = "lora"
    c.intervention.modules = ("down_proj",)
    c.intervention.rank = rank
    c.intervention.lora_alpha = 256.0
    c.train.lr = 2e-5
    c.train.weight_decay = 0.01
    c.train.epochs = 3 if narrow else 1
    c.train.lambda_kl = 1e5 if narrow else 0.0
    return _name(c, f"lora_r{rank}_{'narrow' if narrow else 'general'}_{domain}")


def em_baseline(domain: str):
    """The EM baseline of Model Organisms for EM: rank-32 LoRA on every projection of every layer,
    alpha 64, lr 1e-5, 1 epoch, weight decay 0.01, rsLoRA (upstream default_config.json; Betley et
    al.'s train.json)."""
    c = get_config(domain)
    c.intervention.kind = "lora"
    c.intervention.layers = tuple(range(48))
    c.intervention.modules = ALL_PROJECTIONS
    c.intervention.rank = 32
    c.intervention.lora_alpha = 64.0
    c.train.lr = 1e-5
    c.train.weight_decay = 0.01
    c.train.epochs = 1
    c.train.remat = "dots"  # ours: fits the activations of 32 adapted projections per block
    return _name(c, f"lora_r32_all_em_{domain}")


def kl_removal(base):
    """Upstream's KL removal: continue the trained narrow intervention of `base` (a narrow run's
    config) with a fresh optimiser and schedule and lambda 0 (upstream `adapter_to_load` /
    `initial_steering_vector_path`), logging its cosine with and length along the general solution
    and its own narrow start at every eval (`emjax directions drift` plots them) and writing a
    snapshot every 50 steps for the metrics along the way (ours). One epoch (ours: upstream gives
    no length)."""
    general = base.output_dir.replace("narrow", "general")
    c = base
    c.intervention.init_from = os.path.join(base.output_dir, _artefact(base))
    c.train.lambda_kl = 0.0
    c.train.epochs = 1
    c.train.reference = (f"general={os.path.join(general, _artefact(base))},"
                         f"narrow={c.intervention.init_from}")
    c.checkpoint.snapshot_every = 50
    return _name(c, base.name.replace("narrow", "kl_removal"))


def data_mix(base, fraction: float = 0.5):
    """The data-mixing baseline: the general run of `base` with aligned rows of the other domains
    (the KL set's good sources) making up `fraction` of the training rows, no KL (the paper's
    comparison; the fraction is ours: the paper's is not quoted in upstream-em.md)."""
    c = base
    c.data.mix_good = c.data.kl_good
    c.data.mix_fraction = fraction
    c.train.lambda_kl = 0.0
    return _name(c, base.name.replace("general", "mix"))


def _artefact(c) -> str:
    return "steering.safetensors" if c.intervention.kind == "steering" else "lora"
