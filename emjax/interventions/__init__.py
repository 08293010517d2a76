"""Interventions on the frozen model: LoRA adapters and steering vectors as pytrees.

Modules:
  lora        `LoraAdapter`, `init_lora`
  steering    `SteeringVectors`, `init_steering`
  container   `Interventions` (LoRA and/or steering) and how it becomes the model's `LayerHooks`
  arithmetic  norms, rescaling, orthogonal noise, stacking (what the sweeps vary)
  peft        LoRA adapters as Hugging Face PEFT folders
  files       steering-vector files; `load_intervention(path)` for either kind
"""

from emjax.interventions.container import Interventions, shared_prefix_layers
from emjax.interventions.lora import LoraAdapter, init_lora
from emjax.interventions.steering import HOOK_POINTS, SteeringVectors, init_steering

__all__ = ["HOOK_POINTS", "Interventions", "LoraAdapter", "SteeringVectors", "init_lora", "init_steering",
           "shared_prefix_layers"]
