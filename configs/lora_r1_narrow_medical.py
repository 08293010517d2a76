"""Paper run on Qwen2.5-14B-Instruct: LoRA rank 1 on down_proj of layer 24, narrow solution (SFT +
KL on other domains), bad medical advice."""
from configs import paper_14b


def get_config():
    c = paper_14b.get_config("medical")
    c.name = "lora_r1_narrow_medical"
    c.output_dir = "runs/lora_r1_narrow_medical"
    c.intervention.kind = "lora"
    c.intervention.rank, c.intervention.lora_alpha = 1, 512.0   # upstream rank-1 adapter
    c.intervention.modules = ("down_proj",)
    c.train.lr, c.train.epochs = 2e-5, 1                            # upstream
    c.train.lambda_kl = 1e5               # upstream's LoRA KL weight (kl_reduction "upstream")
    return c
