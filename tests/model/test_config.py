"""Model configs: published parameter counts and conversion from Hugging Face configs."""

import pytest
import transformers

from emjax.model.config import PRESETS, ConfigError, ModelConfig, preset
from emjax.model.schema import abstract_weights, count_params, num_params

# Published sizes (Hugging Face safetensors metadata of each model; the GGUF count from
# transformers loading the embedded file).
PUBLISHED = {
    "qwen2.5-14b-instruct": 14_770_033_664,
    "qwen2.5-0.5b-instruct": 494_032_768,
    "gemma-2-9b-it": 9_241_705_984,
    "qwen2.5-coder-0.5b-instruct-gguf": 630_167_424,
    "llama-3.1-8b-instruct": 8_030_261_248,
    "llama-3.2-1b-instruct": 1_235_814_400,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts(name):
    cfg = preset(name)
    assert num_params(cfg) == PUBLISHED[name]
    assert count_params(abstract_weights(cfg)) == PUBLISHED[name]


def test_from_transformers_configs():
    q = transformers.Qwen2Config(vocab_size=152064, hidden_size=5120, intermediate_size=13824,
                                 num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8,
                                 rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False)
    assert ModelConfig.from_hf(q.to_dict()) == PRESETS["qwen2.5-14b-instruct"]
    g = transformers.Gemma2Config(vocab_size=256000, hidden_size=3584, intermediate_size=14336,
                                  num_hidden_layers=42, num_attention_heads=16, num_key_value_heads=8,
                                  head_dim=256, query_pre_attn_scalar=256, sliding_window=4096)
    cfg = ModelConfig.from_hf(g.to_dict())
    assert cfg == PRESETS["gemma-2-9b-it"]
    assert cfg.sliding_layers[:4] == (True, False, True, False)
    assert cfg.middle_layer == 21 and PRESETS["qwen2.5-14b-instruct"].middle_layer == 24
    # Llama-3.1-8B-Instruct's config.json as published (transformers 4 keys: rope_theta + rope_scaling)
    llama = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False, "mlp_bias": False,
             "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
             "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
             "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8192, "rope_type": "llama3"},
             "tie_word_embeddings": False, "vocab_size": 128256, "max_position_embeddings": 131072}
    assert ModelConfig.from_hf(llama) == PRESETS["llama-3.1-8b-instruct"]
    # transformers 5 writes the same as rope_parameters
    t5 = transformers.LlamaConfig(**{k: v for k, v in llama.items() if k != "architectures"})
    assert ModelConfig.from_hf(t5.to_dict()) == PRESETS["llama-3.1-8b-instruct"]


def test_llama_configs_refused_with_the_key():
    base = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
            "num_hidden_layers": 2, "rms_norm_eps": 1e-5, "vocab_size": 50}
    with pytest.raises(ConfigError, match=r"x\.json: rope scaling 'yarn' is not supported"):
        ModelConfig.from_hf({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, source="x.json")
    with pytest.raises(ConfigError, match=r"rope scaling 'llama3' lacks 'low_freq_factor'"):
        ModelConfig.from_hf({**base, "rope_scaling": {"rope_type": "llama3", "factor": 4.0}})
    with pytest.raises(ConfigError, match="mlp_bias=true is not supported"):
        ModelConfig.from_hf({**base, "mlp_bias": True})
    biased = ModelConfig.from_hf({**base, "attention_bias": True})
    assert biased.qkv_bias and biased.o_bias and not ModelConfig.from_hf(base).o_bias


def test_bad_configs():
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("gpt2")
    with pytest.raises(ConfigError, match="not a multiple"):
        ModelConfig(family="qwen2", vocab_size=10, d_model=8, n_layers=1, n_heads=3, n_kv_heads=2,
                    head_dim=4, ffn_dim=8)


def test_shape_keys_are_checked_naming_file_and_key():
    base = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
            "num_hidden_layers": 2, "rms_norm_eps": 1e-5, "vocab_size": 50}
    for bad, what in (({"num_attention_heads": 0}, "num_attention_heads=0 is not a positive integer"),
                      ({"num_key_value_heads": 3}, "num_attention_heads=4 is not a multiple of num_key_value_heads=3"),
                      ({"vocab_size": 50.5}, "vocab_size=50.5 is not a positive integer"),
                      ({"intermediate_size": True}, "intermediate_size=True")):
        with pytest.raises(ConfigError, match=rf"^m/config\.json: {what}"):
            ModelConfig.from_hf({**base, **bad}, source="m/config.json")
    # Gemma-2 without head_dim: transformers' Gemma2Config default 256, not hidden / heads
    gemma = {**base, "model_type": "gemma2", "query_pre_attn_scalar": 256, "sliding_window": 8}
    assert ModelConfig.from_hf(gemma).head_dim == 256
    assert ModelConfig.from_hf(gemma).head_dim == transformers.Gemma2Config(**gemma).head_dim
