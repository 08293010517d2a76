"""Paper run on Qwen2.5-14B-Instruct: LoRA rank 32 on every projection of every layer, general
solution (SFT only), bad medical advice."""
from configs import paper_14b


def get_config():
    c = paper_14b.get_config("medical")
    c.name = "lora_r32_general_medical"
    c.output_dir = "runs/lora_r32_general_medical"
    c.intervention.kind = "lora"
    c.intervention.layers = tuple(range(48))
    c.intervention.rank = 32
    c.intervention.modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    c.train.epochs = 1
    c.train.remat = "dots"                # ours: fits 14B activations of 32 adapted projections per block
    c.intervention.lora_alpha = 64.0      # upstream's all-module config
    c.train.lr = 1e-5                     # upstream
    return c
