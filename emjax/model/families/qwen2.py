"""Qwen2 / Qwen2.5 (transformers' Qwen2ForCausalLM): the Llama block with q/k/v biases."""

from __future__ import annotations

from emjax.model.config import HFConfig, ModelConfig
from emjax.model.families.entry import Family, GGUFMapping


# transformers' Qwen2Config default of max_window_layers: layers from this index on slide
MAX_WINDOW_LAYERS = 28


def config(hf: HFConfig) -> ModelConfig:
    hf.check("hidden_act", ("silu",), "silu")
    common = hf.common()
    # As transformers' Qwen2Config: a window only with use_sliding_window; then the layers
    # `layer_types` names "sliding_attention", else those from max_window_layers on
    window = hf.count("sliding_window", 4096) if hf.get("use_sliding_window") else None
    types = hf.get("layer_types")
    sliding = (tuple(t == "sliding_attention" for t in types) if types else
               tuple(i >= int(hf.get("max_window_layers", MAX_WINDOW_LAYERS)) for i in range(common["n_layers"])))
    if window is None or not any(sliding):
        window, sliding = None, ()
    return ModelConfig(**common, tie_embeddings=bool(hf.get("tie_word_embeddings", False)), qkv_bias=True,
                       sliding_window=window, sliding_layers=sliding)


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
