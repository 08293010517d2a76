"""The paper's appendix on Gemma-2-9B-it (42 layers, d_model 3584, vocabulary 256000): the 14B runs'
recipes (configs/paper_14b.py) on Gemma, one argument per run:

    emjax train --config=configs/gemma_9b.py:steering,narrow,medical
    emjax train --config=configs/gemma_9b.py:lora_r32,general,sports
    emjax train --config=configs/gemma_9b.py:steering,narrow,medical,upstream   (paper_14b.as_upstream)
    emjax sweep all --config=configs/sweep_paper.py:steering,medical,gemma     (the pair's sweeps)

KIND,SOLUTION,DOMAIN[,upstream]: KIND steering | lora_r1 | lora_r32, SOLUTION general | narrow,
DOMAIN medical | financial | sports. $EMJAX_GEMMA_MODEL is the model folder (default
/models/gemma-2-9b-it); outputs go to runs/gemma_<KIND>_<SOLUTION>_<DOMAIN>/.

Sources. The appendix's values were not readable here: a third-party summary of the paper says
"Gemma-2-9B replicates the steering-vector results in appendix"
(https://ch-ai-tanya.cyberchitta.cc/raw/papers/source-2026-em-easy-soligo.html), and upstream's code
has no Gemma-2 config (its one Gemma file, finetune/sft/full-ft_config.json, is a full fine-tune of
gemma-3-4b-it; the steering runner's memory table lists "gemma-2-9b"). So every value is ours: the
Qwen recipe at layer L // 2 = 21; the LoRA runs extend the appendix's steering runs. What that
means on Gemma-2:
  * steering site: hook "mlp_out" is upstream's (steering_vector_trainer_optimized.py hooks
    layers[i].mlp.down_proj, which on Gemma-2 is before the post-feed-forward norm, so that norm
    rescales alpha*v together with the MLP output); "block_out" would add to the residual stream
  * KL: kl_reduction "upstream" divides by Gemma's V = 256000, as upstream's code would, so lambda
    1e6 weighs the per-token KL 3.9x where on Qwen (V = 152064) it weighs 6.6x
  * chat template: Gemma's has no system role; upstream's data carry none (user and assistant
    turns), and without Qwen's default system prompt data.loss_tokens "all" covers user + assistant
  * significance norms: the Qwen grid ||alpha*v|| 0..1280 (configs/sweep_paper.py)
"""
from configs import paper_14b

KINDS = ("steering", "lora_r1", "lora_r32")
USAGE = ("configs/gemma_9b.py takes KIND,SOLUTION,DOMAIN[,upstream] after a colon, e.g. "
         f"configs/gemma_9b.py:steering,narrow,medical; KIND one of {KINDS}, SOLUTION general or narrow, "
         f"DOMAIN one of {sorted(paper_14b.FILES)}")


def get_config(arg: str | None = None):
    words = (arg or "").split(",")
    if len(words) not in (3, 4) or words[0] not in KINDS or words[1] not in ("general", "narrow") \
            or words[2] not in paper_14b.FILES or words[3:] not in ([], ["upstream"]):
        raise ValueError(USAGE + (f"; got {arg!r}" if arg else ""))
    c = paper_14b.run(words[0], words[1] == "narrow", words[2], paper_14b.GEMMA)
    return paper_14b.as_upstream(c) if words[3:] else c
