"""The paper's three sweeps (efficiency, stability, significance) for a trained general/narrow pair,
as upstream ran them (em_organism_dir/stability/), one argument per pair:

    emjax sweep all --config=configs/sweep_paper.py:steering,medical
    emjax sweep all --config=configs/sweep_paper.py:lora_r32,sports
    emjax sweep all --config=configs/sweep_paper.py:steering,medical,upstream    (upstream's loss tokens)
    emjax sweep all --config=configs/sweep_paper.py:steering,financial,gemma     (Gemma-2-9B-it)

KIND,DOMAIN[,gemma][,upstream]: KIND steering | lora_r1 | lora_r32 | lora_r32_dp24 (the runs of
configs/paper_14b.py, whose output folders are read: runs/<run>/steering.safetensors or lora/);
DOMAIN medical | financial | sports. Outputs: runs/sweeps_paper/<KIND>_<DOMAIN>[...]/.

Values (sweep_default.py has each field's meaning; "upstream" names upstream's file):
  training rows ......... 100 rows of the run's training file, seed 42 (upstream utils.py prepare_dataset)
  loss tokens ........... "assistant" (the intended response-only loss); ",upstream": "all", as upstream's
                          utils.py mask_labels_for_response_only keys on the first "\\n" (the one after
                          <|im_start|>system), so its loss keeps system + user + assistant tokens but 3;
                          "all" keeps every token but the first. Steering with ",upstream" also reads
                          the as_upstream runs (upstream's trainer: all tokens, row 0 steered).
  efficiency ............ steering: 9 multiples 0..2 of each trained norm (steering_experiments.py);
                          LoRA: 21 multiples 0..2 (experiments.py norm_rescaling_experiment), B rescaled
  stability ............. 12 eps x 10 seeds (exp_set.sh --num_seeds 10); steering: noise on v; LoRA:
                          noise on A and B of every module, each keeping its own norm
                          (lora_noise "per_matrix": experiments.py perturbation_experiment)
  significance .......... 50 FineWeb documents, 2000 characters, 512 tokens (exp_set.sh --max_samples 50;
                          steering_vector_kl_experiment.py). Steering: absolute norms ||v|| = 0, 0.2,
                          .., 5 times alpha 256, i.e. ||alpha*v|| 0..1280 in 26 steps (that file).
                          LoRA: upstream has no FineWeb run for adapters (its LoRA KL is on the base
                          model's own 50-token continuations, experiments.py kl_divergence_experiment,
                          not ported); emjax runs the same FineWeb KL on ||scale*BA||_F at 26 multiples
                          0..2 of the larger trained update norm (ours: no absolute scale to copy)
  random baselines ...... 5 norm-matched random directions (the file's default; exp_set.sh passes 1)
  rows per pass, chunks . 8 rows, 8 versions per vmap chunk, loss chunk 64 (ours: memory)
"""
import numpy as np

from configs import paper_14b, sweep_default

USAGE = ("configs/sweep_paper.py takes KIND,DOMAIN[,gemma][,upstream] after a colon, e.g. "
         f"configs/sweep_paper.py:steering,medical; KIND one of {sorted(paper_14b.KINDS)}, "
         f"DOMAIN one of {sorted(paper_14b.FILES)}")
MODIFIERS = ("gemma", "upstream")


def upstream_significance_norms(c, alpha: float) -> None:
    """Significance at upstream's absolute norms: ||v|| = 0, 0.2, .., 5 (steering_vector_kl_experiment.py),
    i.e. ||alpha*v|| = alpha * that, 26 norms."""
    c.significance.norms = tuple(np.round(alpha * np.linspace(0.0, 5.0, 26), 4).tolist())
    c.significance.norms_relative = False


def get_config(arg: str | None = None):
    if not arg:
        raise ValueError(USAGE)
    words = arg.split(",")
    kind, domain, mods = words[0], words[1] if len(words) > 1 else "", words[2:]
    if kind not in paper_14b.KINDS or domain not in paper_14b.FILES or not set(mods) <= set(MODIFIERS):
        raise ValueError(f"{USAGE}; got {arg!r}")
    model = paper_14b.GEMMA if "gemma" in mods else paper_14b.QWEN
    upstream = "upstream" in mods
    runs = {}
    for label, narrow in (("general", False), ("narrow", True)):
        r = paper_14b.run(kind, narrow, domain, model)
        runs[label] = paper_14b.as_upstream(r) if upstream and r.intervention.kind == "steering" else r
    trained = runs["general"]

    c = sweep_default.get_config()
    c.name = paper_14b.MODELS[model].prefix + "_".join([kind, domain] + (["upstream"] if upstream else []))
    c.output_dir = f"runs/sweeps_paper/{c.name}"
    c.model.source = trained.model.source
    c.model.dtype = trained.model.dtype
    c.interventions = ",".join(f"{label}={r.output_dir}/{paper_14b.artefact(r)}" for label, r in runs.items())
    c.data.train = trained.data.train
    c.data.loss_tokens = "all" if upstream else "assistant"
    c.stability.lora_noise = "per_matrix"
    if trained.intervention.kind == "steering":
        upstream_significance_norms(c, trained.intervention.alpha)
    c.loss_chunk = 64
    c.chunk = 8
    return c
