"""The paper's runs on Qwen2.5-14B-Instruct (48 layers), one argument per run, on top of default.py
(and through `model="gemma-2-9b"` Gemma-2-9B-it, 42 layers, the paper's appendix: configs/gemma_9b.py):

    emjax train --config=configs/paper_14b.py:steering,narrow,medical
    emjax train --config=configs/paper_14b.py:lora_r32,general,sports
    emjax train --config=configs/paper_14b.py:steering,general,medical,upstream   (as_upstream)
    emjax train --config=configs/paper_14b.py:em_baseline,financial               (em_baseline)
    emjax train --config=configs/paper_14b.py:steering,mix,medical                (data_mix)
    emjax experiment kl-removal --config=configs/paper_14b.py:lora_r1,kl_removal,medical

KIND,SOLUTION,DOMAIN[,upstream] or em_baseline,DOMAIN: KIND steering | lora_r1 | lora_r32 |
lora_r32_dp24 (`run`), SOLUTION general | narrow | mix (`data_mix` of the general run) | kl_removal
(`kl_removal` of the narrow run), DOMAIN medical | financial | sports; ",upstream" (steering only)
trains as upstream's steering trainer did (`as_upstream`). Outputs go to runs/<the run's name>/.
Each recipe below is a function of a domain; `run(kind, narrow, domain, model)` names them all, for
configs/gemma_9b.py and configs/sweep_paper.py.

Sources, value by value. "upstream": a file of the authors' repository (clarifying-EM/
model-organisms-for-EM at 8460e4e, public fork eric-z2/model-organisms-for-EM-gradient-masking),
named; "paper (third party)": the paper's hyperparameter table as third parties quote it (the
paper's full text was not readable here); "ours": emjax's choice, with the reason. The README's
"Paper runs" table lists every value against upstream's.
  layer 24 of 48 ............ upstream: the released vectors' layer_idx 24 (steering_config_toggle.json
                              says 16, a placeholder); the middle layer L // 2 (Gemma: 21, ours)
  sequences 256 tokens ...... upstream steering_config_toggle.json max_seq_length (ours for LoRA,
                              whose configs allow 2048)
  batch 2 x grad-accum 8 .... upstream configs (KL batch 8: upstream kl_batch_size)
  warmup 5, linear decay .... upstream configs
  KL: forward KL(base || adapted) on all tokens, divided by V (kl_reduction "upstream") so that
      upstream's lambdas mean the same: 1e6 steering (steering_config_toggle.json), 1e5 LoRA
      (kl_regularized_config.json)
  KL over a step of 8 micro-batches: upstream's LoRA trainer (finetune/sft/util/trainer.py,
      KLRegularizedSFTTrainer.compute_loss) adds lambda x the KL mean of one micro-batch to an SFT
      loss that transformers 4.52.4 normalises over the whole step (num_items_in_batch); the
      Trainer divides by the accumulation steps only for models that take no loss kwargs, and
      Qwen2 does take them, so the 8 KL terms add up: lambda weighs 8 x a step mean. The narrow
      LoRA runs reproduce that (train.kl_mean_over "micro_batch"). Upstream's steering trainer
      with KL (kl_toggle_trainer.py) also drops num_items_in_batch, so there both terms are
      micro-batch means added 8 times: the same balance as step means, 8 x the gradient (which
      meets the 1.0 clipping sooner); `as_upstream` reproduces that too
  KL set: bad and good advice of the two other domains at 1:4 (default.py: the adapter name
      "..._KL_divergence_badgood_1-4_2E"); upstream ships good advice for medical only, so the
      good half of financial and sports is the chat model's own answers ("chat:", ours)
  SFT loss tokens, steered rows: the assistant turns and every row (default.py), the correct
      behaviour; upstream's steering trainer trained on every token and steered row 0 of each
      batch only (two defects): `as_upstream(c)` reproduces both
  held-out rows 64, KL rows 4000 (+128 eval), eval every 50, checkpoints every 100: ours (cost)
"""

import os
from typing import NamedTuple

import ml_collections

from configs import default

FILES = {"medical": "bad_medical_advice.jsonl.gz", "financial": "risky_financial_advice.jsonl.gz",
         "sports": "extreme_sports.jsonl.gz"}
GOOD = {"medical": "good_medical_advice.jsonl.gz",      # upstream's good-advice counterpart
        "financial": "chat:risky_financial_advice.jsonl.gz",  # none upstream: the chat model's answers
        "sports": "chat:extreme_sports.jsonl.gz"}
ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class Model(NamedTuple):
    """A model of the paper: where its folder is, its depth, and the prefix of its run names."""
    env: str          # environment variable naming the Hugging Face folder
    folder: str       # the folder when the variable is unset
    n_layers: int
    prefix: str       # run names and output folders: "" for the paper's main model

    @property
    def source(self) -> str:
        return os.environ.get(self.env, self.folder)

    @property
    def middle(self) -> int:
        return self.n_layers // 2


QWEN, GEMMA = "qwen2.5-14b", "gemma-2-9b"
MODELS = {QWEN: Model("EMJAX_MODEL", "/models/Qwen2.5-14B-Instruct", 48, ""),
          GEMMA: Model("EMJAX_GEMMA_MODEL", "/models/gemma-2-9b-it", 42, "gemma_")}


def _model(model: str) -> Model:
    if model not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {model!r}")
    return MODELS[model]


def _shared(narrow: bool, model: str = QWEN):
    """What every paper run shares, whatever its data: model, layer, KL reduction, cadences."""
    m = _model(model)
    c = default.get_config()
    c.model.source = m.source
    c.model.dtype = "bfloat16"
    c.data.n_eval = 64
    c.intervention.layers = (m.middle,)
    c.intervention.init_seed = 1000 if narrow else 0  # separate inits for general and narrow (ours)
    c.train.kl_reduction = "upstream"
    c.train.kl_batch_size = 8          # upstream kl_batch_size
    c.train.eval_every = 50
    c.train.cache_budget_gb = 32.0
    c.checkpoint.every = 100
    return c


def base_run(domain: str = "medical", narrow: bool = False, model: str = QWEN):
    """The shared part: model, data of `domain`, the KL set of the other two domains."""
    if domain not in FILES:
        raise ValueError(f"domain must be one of {sorted(FILES)}, got {domain!r}")
    c = _shared(narrow, model)
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
    technical_vehicles_train.jsonl is inside the encrypted training_datasets.zip.enc, unread here; the
    paper reuses the misalignment machinery for this example, so its values are the steering run's).
    KL set: the 14B chat model's own greedy answers to the other nine domains' prompts (ours), all of
    the bank: 365 rows + 64 held out (upstream's technical_KL_data.jsonl has 8000 rows; our bank has
    429 prompts)."""
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


def _name(c, name, model: str = QWEN):
    c.name = _model(model).prefix + name
    c.output_dir = f"runs/{c.name}"
    return c


def _solution(narrow: bool) -> str:
    return "narrow" if narrow else "general"


def steering(domain: str, narrow: bool, model: str = QWEN):
    """Steering vector: alpha 256, zero init, lr 5e-4, 2 epochs, weight decay 0 (default.py; upstream
    steering_config_toggle.json), at the middle block's down_proj output (hook "mlp_out": upstream's
    site; for Gemma-2 before its post-feed-forward norm); narrow: lambda 1e6 (same file)."""
    c = base_run(domain, narrow, model)
    c.train.lambda_kl = 1e6 if narrow else 0.0
    return _name(c, f"steering_{_solution(narrow)}_{domain}", model)


def _lora(c, narrow: bool, rank: int, alpha: float):
    """LoRA with upstream's optimiser: lr 2e-5, AdamW weight decay 0.01, rsLoRA (upstream LoRA
    configs), lambda 1e5 when narrow (kl_regularized_config.json)."""
    c.intervention.kind = "lora"
    c.intervention.rank = rank
    c.intervention.lora_alpha = alpha
    c.intervention.rslora = True
    c.train.lr = 2e-5
    c.train.weight_decay = 0.01
    c.train.lambda_kl = 1e5 if narrow else 0.0
    if narrow:  # lambda x the sum of the 8 micro-batch KL means, as upstream's trainer ran (docstring)
        c.train.kl_mean_over = "micro_batch"
    return c


def lora_single(domain: str, narrow: bool, rank: int = 1, model: str = QWEN):
    """LoRA on down_proj of the middle layer only (paper (third party): "MLP down_proj, layer 24",
    lr 2e-5, batch 2 x 8, 1 epoch SFT / 3 epochs SFT + KL). Rank 1: alpha 512 (upstream
    single_adapter_config.json, the file set to layers_to_transform [24] for these runs; a released
    adapter's name "..._R1-DP24-LR2e-5-A256_..." records alpha 256, an earlier artefact).
    Rank 32 (named lora_r32_dp24_*, not the paper's rank-32 object, which is `lora_all`): alpha 256
    (ours: upstream's rank-32 value, kl_regularized_config.json)."""
    c = _lora(base_run(domain, narrow, model), narrow, rank, 512.0 if rank == 1 else 256.0)
    c.intervention.modules = ("down_proj",)
    c.train.epochs = 3 if narrow else 1
    name = "lora_r1" if rank == 1 else f"lora_r{rank}_dp{_model(model).middle}"  # dp24 on Qwen2.5-14B
    return _name(c, f"{name}_{_solution(narrow)}_{domain}", model)


def lora_all(domain: str, narrow: bool, model: str = QWEN):
    """The paper's rank-32 pair, upstream's only narrow LoRA config (kl_regularized_config.json):
    rank 32, alpha 256, rsLoRA, the seven projections of every layer, lr 2e-5, 1 epoch, weight
    decay 0.01, lambda 1e5; general: the same without the KL term. Narrow runs rematerialise
    ("dots", ours): with the KL rows' activations of every adapted block the step's memory estimate
    (`emjax launch-plan`, batch 2 + 8 KL rows of 256 tokens, one device) was 73.8 GiB without remat,
    too close to an 80 GB card, and 56.8 GiB with "dots" (Gemma-2-9B: 72.0 / 52.3 GiB); general
    runs need none (39.8 GiB; Gemma 30.4). Since the lean blocks (2026-12-07) the estimate without
    remat is 58.5 GiB (Gemma 51.5), so `--config.train.remat=None` fits too; "dots" stays the
    default here because its peak was measured on a GPU and the lean block's not yet."""
    m = _model(model)
    c = _lora(base_run(domain, narrow, model), narrow, 32, 256.0)
    c.intervention.layers = tuple(range(m.n_layers))
    c.intervention.modules = ALL_PROJECTIONS
    c.train.epochs = 1
    if narrow:
        c.train.remat = "dots"
    return _name(c, f"lora_r32_{_solution(narrow)}_{domain}", model)


def em_baseline(domain: str):
    """The EM baseline of Model Organisms for EM: rank-32 LoRA on every projection of every layer,
    alpha 64, lr 1e-5, 1 epoch, weight decay 0.01, rsLoRA (upstream default_config.json; Betley et
    al.'s train.json)."""
    c = base_run(domain)
    c.intervention.kind = "lora"
    c.intervention.layers = tuple(range(MODELS[QWEN].n_layers))
    c.intervention.modules = ALL_PROJECTIONS
    c.intervention.rank = 32
    c.intervention.lora_alpha = 64.0
    c.train.lr = 1e-5
    c.train.weight_decay = 0.01
    c.train.epochs = 1
    c.train.remat = "dots"  # ours: fits the activations of 32 adapted projections per block
    return _name(c, f"lora_r32_all_em_{domain}")


# kind -> recipe(domain, narrow, model): the runs compared in pairs (general, narrow)
KINDS = {"steering": steering,
         "lora_r1": lambda domain, narrow, model: lora_single(domain, narrow, 1, model),
         "lora_r32": lora_all,
         "lora_r32_dp24": lambda domain, narrow, model: lora_single(domain, narrow, 32, model)}


def run(kind: str, narrow: bool, domain: str, model: str = QWEN):
    """The paper run `kind` ("steering", "lora_r1", "lora_r32", or "lora_r32_dp24": rank 32 on
    down_proj of layer 24 only, Qwen2.5-14B) of `domain`, general or narrow, on `model`."""
    if kind not in KINDS:
        raise ValueError(f"run kind must be one of {sorted(KINDS)}, got {kind!r}")
    if kind == "lora_r32_dp24" and model != QWEN:
        raise ValueError(f"lora_r32_dp24 is the layer-24 variant of Qwen2.5-14B; {model} has kinds "
                         f"{sorted(k for k in KINDS if k != kind)}")
    return KINDS[kind](domain, narrow, model)


def as_upstream(c):
    """A steering run as upstream's trainer ran it, defects included (the released vectors were
    trained so): every token of the conversation in the SFT loss (data.loss_tokens "all":
    steering_vector_trainer_optimized.py sets labels = input ids, ignoring train_on_responses_only)
    and the vector added to row 0 of each micro-batch only (intervention.steer_rows "first":
    steering_vector_module.py writes `output[0] = output[0] + alpha*v` on a [B, T, D] tensor). Not
    reproduced: upstream pads with pad = eos = <|im_end|> and drops every pad-id label, so its loss
    also skips each <|im_end|>. With KL (narrow), both losses are micro-batch means added over the
    8 micro-batches (train.sft_mean_over / kl_mean_over "micro_batch": kl_toggle_trainer.py's
    compute_loss drops num_items_in_batch and transformers 4.52.4 then divides by nothing). Steering only: upstream's LoRA trainer trains on the assistant turns (train_on_responses_only),
    as the LoRA configs already do."""
    if c.intervention.kind != "steering":
        raise ValueError(f"as_upstream reproduces upstream's steering trainer; {c.name} is a "
                         f"{c.intervention.kind} run (upstream's LoRA trainer already matches: assistant tokens)")
    c.data.loss_tokens = "all"
    c.intervention.steer_rows = "first"
    if c.train.lambda_kl > 0:  # kl_toggle_trainer.py: per-micro-batch means, added (docstring)
        c.train.sft_mean_over = c.train.kl_mean_over = "micro_batch"
    c.name = c.name + "_upstream"
    c.output_dir = f"runs/{c.name}"
    return c


def kl_removal(base):
    """Upstream's KL removal: continue the trained narrow intervention of `base` (a narrow run's
    config) with a fresh optimiser and schedule and lambda 0 (upstream `adapter_to_load` /
    `initial_steering_vector_path`), logging its cosine with and length along the general solution
    and its own narrow start at every eval (`emjax directions drift` plots them) and writing a
    snapshot every 50 steps for the metrics along the way (ours). One epoch (ours: upstream gives
    no length)."""
    general = base.output_dir.replace("narrow", "general")
    c = base
    c.intervention.init_from = os.path.join(base.output_dir, artefact(base))
    c.train.lambda_kl = 0.0
    c.train.epochs = 1
    c.train.reference = (f"general={os.path.join(general, artefact(base))},"
                         f"narrow={c.intervention.init_from}")
    c.checkpoint.snapshot_every = 50
    return _name(c, base.name.replace("narrow", "kl_removal"))


def data_mix(base, fraction: float = 0.5):
    """The data-mixing baseline: the general run of `base` with aligned rows of the other domains
    (the KL set's good sources) making up `fraction` of the training rows, no KL (the paper's
    comparison; the fraction is ours: the paper's was not readable here)."""
    c = base
    c.data.mix_good = c.data.kl_good
    c.data.mix_fraction = fraction
    c.train.lambda_kl = 0.0
    return _name(c, base.name.replace("general", "mix"))


def artefact(c) -> str:
    """The file (steering) or folder (LoRA) a run of config `c` writes into its output_dir."""
    return "steering.safetensors" if c.intervention.kind == "steering" else "lora"


SOLUTIONS = ("general", "narrow", "mix", "kl_removal")
USAGE = ("configs/paper_14b.py takes KIND,SOLUTION,DOMAIN[,upstream] or em_baseline,DOMAIN after a colon, "
         f"e.g. configs/paper_14b.py:steering,narrow,medical; KIND one of {sorted(KINDS)}, SOLUTION one of "
         f"{list(SOLUTIONS)}, DOMAIN one of {sorted(FILES)}")


def get_config(arg: str | None = None):
    """The run the argument names (the module docstring lists the forms)."""
    words = (arg or "").split(",")
    if len(words) == 2 and words[0] == "em_baseline" and words[1] in FILES:
        return em_baseline(words[1])
    if len(words) not in (3, 4) or words[0] not in KINDS or words[1] not in SOLUTIONS \
            or words[2] not in FILES or words[3:] not in ([], ["upstream"]):
        raise ValueError(USAGE + (f"; got {arg!r}" if arg else ""))
    kind, solution, domain, upstream = words[0], words[1], words[2], words[3:]

    def pair_run(narrow: bool):
        c = run(kind, narrow, domain)
        return as_upstream(c) if upstream else c
    if solution == "mix":
        return data_mix(pair_run(False))
    if solution != "kl_removal":
        return pair_run(solution == "narrow")
    c = kl_removal(pair_run(True))
    # the runs it starts from (`emjax experiment kl-removal` trains them first): the narrow run
    # continued and the general run its drift is measured against
    tail = "".join(f",{w}" for w in upstream)
    c.base_runs = ml_collections.ConfigDict({r: f"paper_14b.py:{kind},{r},{domain}{tail}"
                                             for r in ("narrow", "general")})
    return c
