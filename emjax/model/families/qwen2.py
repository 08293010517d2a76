"""Qwen2 / Qwen2.5 (transformers' Qwen2ForCausalLM): the Llama block with q/k/v biases."""

from __future__ import annotations

from emjax.model.config import HFConfig, ModelConfig
from emjax.model.families.entry import Family, GGUFMapping


def config(hf: HFConfig) -> ModelConfig:
    if hf.get("use_sliding_window"):
        raise hf.fail("use_sliding_window=true is not supported")
    hf.check("hidden_act", ("silu",), "silu")
    return ModelConfig(**hf.common(), tie_embeddings=bool(hf.get("tie_word_embeddings", False)), qkv_bias=True)


def _preset(**kw) -> ModelConfig:
    return ModelConfig(family="qwen2", rope_theta=1e6, norm_eps=1e-6, qkv_bias=True, **kw)


FAMILY = Family(
    model_type="qwen2", architectures=("Qwen2ForCausalLM",), config=config,
    # llama.cpp's `qwen2` architecture (what transformers' GGUF loader also reads).
    gguf=GGUFMapping(arch="qwen2", fixed={"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                                          "hidden_act": "silu", "use_sliding_window": False}),
    # Shapes from the models' config.json; parameter counts checked in tests/model/test_config.py.
    presets={
        "qwen2.5-14b-instruct": _preset(vocab_size=152064, d_model=5120, n_layers=48, n_heads=40, n_kv_heads=8,
                                        head_dim=128, ffn_dim=13824, tie_embeddings=False),
        "qwen2.5-0.5b-instruct": _preset(vocab_size=151936, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2,
                                         head_dim=64, ffn_dim=4864, tie_embeddings=True),
        # The embedded GGUF (Qwen2.5-Coder-0.5B-Instruct) ships a separate output.weight.
        "qwen2.5-coder-0.5b-instruct-gguf": _preset(vocab_size=151936, d_model=896, n_layers=24, n_heads=14,
                                                    n_kv_heads=2, head_dim=64, ffn_dim=4864, tie_embeddings=False),
    })
