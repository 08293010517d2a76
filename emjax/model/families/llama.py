"""Llama (transformers' LlamaForCausalLM), Llama-3.x included: the plain pre-norm block (two RMSNorms
scaling by w, SwiGLU, no biases unless `attention_bias`), RoPE with Llama-3's frequency scaling,
tied (Llama-3.2 1B/3B) or untied embeddings."""

from __future__ import annotations

from emjax.model.config import HFConfig, ModelConfig, RopeScaling
from emjax.model.families.entry import Family


def config(hf: HFConfig) -> ModelConfig:
    hf.check("hidden_act", ("silu",), "silu")
    if hf.get("mlp_bias", False):
        raise hf.fail("mlp_bias=true is not supported")
    bias = bool(hf.get("attention_bias", False))  # transformers: on q, k, v and o alike
    return ModelConfig(**hf.common(), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                       qkv_bias=bias, o_bias=bias)


def _preset(**kw) -> ModelConfig:
    return ModelConfig(family="llama", vocab_size=128256, n_kv_heads=8, rope_theta=500000.0, norm_eps=1e-5, **kw)


FAMILY = Family(
    model_type="llama", architectures=("LlamaForCausalLM",), config=config,
    # Shapes and rope_scaling from the models' config.json; parameter counts (safetensors metadata)
    # checked in tests/model/test_config.py.
    presets={
        "llama-3.1-8b-instruct": _preset(d_model=4096, n_layers=32, n_heads=32, head_dim=128, ffn_dim=14336,
                                         rope_scaling=RopeScaling(8.0, 1.0, 4.0, 8192)),
        "llama-3.2-1b-instruct": _preset(d_model=2048, n_layers=16, n_heads=32, head_dim=64, ffn_dim=8192,
                                         rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192), tie_embeddings=True),
    })
