"""Gemma-2 (transformers' Gemma2ForCausalLM): sandwich norms scaling by (1 + w), sqrt(D) embedding
scale, GeGLU, attention and final soft-caps, sliding-window attention on alternate layers."""

from __future__ import annotations

from emjax.model.config import HFConfig, ModelConfig, opt_float
from emjax.model.families.entry import Family

# The block features every Gemma-2 has.
BLOCK = dict(norm_plus_one=True, post_attn_norm=True, post_mlp_norm=True, embed_scale=True, activation="gelu_tanh")


# transformers' ACT2FN names -> ours: gelu_pytorch_tanh and gelu_new are the tanh approximation
GELUS = {"gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}


def _even_layers(n: int) -> tuple[bool, ...]:
    return tuple(i % 2 == 0 for i in range(n))  # transformers' default: even layers slide


def config(hf: HFConfig) -> ModelConfig:
    common = hf.common(head_dim_default=256)  # transformers' Gemma2Config default
    layer_types = hf.get("layer_types")
    sliding = (tuple(t == "sliding_attention" for t in layer_types) if layer_types
               else _even_layers(common["n_layers"]))
    # transformers' Gemma2MLP reads `hidden_activation` alone (default gelu_pytorch_tanh; a Gemma-1
    # `hidden_act` is not read) and, unlike Gemma-1, runs "gelu" as the exact erf GELU
    act = hf.get("hidden_activation") or "gelu_pytorch_tanh"
    if act not in GELUS:
        raise hf.fail(f"hidden_activation={act!r} is not supported (one of {sorted(GELUS)})")
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig(**common, **{**BLOCK, "activation": GELUS[act]},
                       tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
                       qkv_bias=bias, o_bias=bias, query_pre_attn_scalar=float(hf.need("query_pre_attn_scalar")),
                       attn_softcap=opt_float(hf.get("attn_logit_softcapping")),
                       final_softcap=opt_float(hf.get("final_logit_softcapping")),
                       sliding_window=int(hf.need("sliding_window")), sliding_layers=sliding)


FAMILY = Family(
    model_type="gemma2", architectures=("Gemma2ForCausalLM",), config=config,
    # Gemma-2 names its pre-MLP norm `pre_feedforward_layernorm`; its `post_attention_layernorm`
    # is the attention branch's norm (the schema's post_attn_norm).
    hf_names={"mlp_norm": "pre_feedforward_layernorm.weight"},
    presets={"gemma-2-9b-it": ModelConfig(
        family="gemma2", vocab_size=256000, d_model=3584, n_layers=42, n_heads=16, n_kv_heads=8, head_dim=256,
        ffn_dim=14336, rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=True, query_pre_attn_scalar=256.0,
        attn_softcap=50.0, final_softcap=30.0, sliding_window=4096, sliding_layers=_even_layers(42), **BLOCK)})
