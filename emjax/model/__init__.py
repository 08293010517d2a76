"""The model: config, the one weight schema, the pure-function decoder, sampling, sharding.

Modules (imports point down this list, never up):
  config            `ModelConfig`: shapes and block features, from a Hugging Face config.json or a preset
  families          the registry of families (Qwen2, Gemma-2, Llama): config builders, weight names,
                    GGUF mappings, presets; the only place a family is named
  schema            every weight declared once (shape, logical axes, HF and GGUF names)
  layers            RMSNorm, RoPE, positions, frozen-weight matmuls
  attention         masks, exact XLA attention, fused cuDNN attention
  hooks             where interventions enter a block (steering sites, LoRA in projections, ablation)
  ablation          directions projected out of the residual stream (wraps any intervention)
  decoder           embed / run_layers / run_suffix / unembed / forward
  decode_attention  the one-query decode attention as a Pallas kernel (GPU)
  sampling          KV-cache sampling
  sharding          logical axes -> device meshes
  compile_cache     JAX's persistent compilation cache, turned on by the CLI's compiling commands

The common entry points are re-exported here: `from emjax import model as M; M.forward(...)`.
"""

from emjax.model import families  # noqa: F401 - registers the families with emjax.model.config
from emjax.model.ablation import Ablated, DirectionAblation, ablated, direction_ablation
from emjax.model.attention import attend, attention_mask, resolve_attention
from emjax.model.config import ConfigError, ModelConfig, preset
from emjax.model.decoder import embed, forward, run_layers, run_suffix, unembed
from emjax.model.layers import CUBLAS_GEMMS, default_positions, rms_norm
from emjax.model.sampling import generate
from emjax.model.schema import LayerWeights, Weights, abstract_weights, init_random, num_params

__all__ = ["Ablated", "ConfigError", "DirectionAblation", "ablated", "direction_ablation", "CUBLAS_GEMMS", "LayerWeights", "ModelConfig", "Weights", "abstract_weights", "attend",
           "attention_mask", "default_positions", "embed", "forward", "generate", "init_random", "num_params",
           "preset", "resolve_attention", "rms_norm", "run_layers", "run_suffix", "unembed"]
