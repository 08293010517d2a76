"""Model configuration for the two decoder families emjax ports: Qwen2 and Gemma-2.

A `ModelConfig` is a frozen, hashable dataclass, so it can be a static argument of `jax.jit`.
It is built from a Hugging Face `config.json` (`ModelConfig.from_hf`) or from a named preset
(`PRESETS`), never from hard-coded per-model constants inside the model code: every number that
differs between checkpoints (rope theta, norm epsilon, query scale, window) is read from the config.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Literal

from emjax.errors import EmjaxError

Family = Literal["qwen2", "gemma2"]
SUPPORTED_MODEL_TYPES = ("qwen2", "gemma2")


class ConfigError(EmjaxError, ValueError):
    """A model config that emjax cannot run (unknown architecture, missing or bad key)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and numerics of one decoder-only transformer.

    Attributes:
      family: "qwen2" or "gemma2"; selects the block layout (Gemma-2 has four norms per layer).
      vocab_size: rows of the embedding matrix (may exceed the tokenizer's vocabulary).
      d_model: residual-stream width D.
      n_layers: number of decoder blocks L.
      n_heads / n_kv_heads / head_dim: grouped-query attention shapes.
      ffn_dim: hidden width F of the gated MLP.
      rope_theta: RoPE base frequency (rotate-half convention).
      norm_eps: RMSNorm epsilon.
      tie_embeddings: the unembedding is the transposed embedding (no `lm_head` weight).
      qkv_bias: q/k/v projections carry biases (Qwen2).
      query_pre_attn_scalar: attention scale is this ** -0.5 (Gemma-2; Qwen uses head_dim).
      attn_softcap / final_softcap: `c * tanh(x / c)` on attention / final logits, or None.
      sliding_window: window size W for sliding layers: a query at position p sees keys at
        positions > p - W.
      sliding_layers: per layer, whether it uses the sliding window (Gemma-2: even layers).
      activation: "silu" (Qwen2 SwiGLU) or "gelu_tanh" (Gemma-2 GeGLU).
    """

    family: Family
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    tie_embeddings: bool = False
    qkv_bias: bool = False
    query_pre_attn_scalar: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    sliding_window: int | None = None
    sliding_layers: tuple[bool, ...] = ()
    activation: Literal["silu", "gelu_tanh"] = "silu"

    def __post_init__(self):
        if self.family not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(f"unknown model family {self.family!r}; emjax supports {SUPPORTED_MODEL_TYPES}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if not self.sliding_layers:
            object.__setattr__(self, "sliding_layers", (False,) * self.n_layers)
        if len(self.sliding_layers) != self.n_layers:
            raise ConfigError(f"sliding_layers has {len(self.sliding_layers)} entries for {self.n_layers} layers")
        if any(self.sliding_layers) and not self.sliding_window:
            raise ConfigError("sliding_layers set but sliding_window is missing")

    # -- derived ---------------------------------------------------------------------------
    @property
    def is_gemma(self) -> bool:
        return self.family == "gemma2"

    @property
    def attn_scale(self) -> float:
        """Multiplier of q.k: query_pre_attn_scalar**-0.5 if set, else head_dim**-0.5."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def middle_layer(self) -> int:
        """The paper's "layer 24 of 48", generalised to L // 2."""
        return self.n_layers // 2

    def replace(self, **kw: Any) -> "ModelConfig":
        """A copy with fields changed; a new layer count re-derives the sliding pattern
        (Gemma-2: even layers slide) unless `sliding_layers` is given too."""
        if "n_layers" in kw and "sliding_layers" not in kw:
            kw["sliding_layers"] = _gemma2_sliding(kw["n_layers"]) if any(self.sliding_layers) else ()
        return dataclasses.replace(self, **kw)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf: dict[str, Any] | str | os.PathLike, *, source: str | None = None) -> "ModelConfig":
        """Builds a config from a Hugging Face `config.json` (a dict, a file or its folder).

        Raises ConfigError naming the file and key for unknown architectures or missing keys.
        """
        if not isinstance(hf, dict):
            path = os.fspath(hf)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            source = source or path
            try:
                with open(path) as f:
                    hf = json.load(f)
            except FileNotFoundError:
                raise ConfigError(f"{path}: no config.json found") from None
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}: not valid JSON ({e})") from None
        where = source or "config"
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            archs = hf.get("architectures")
            raise ConfigError(
                f"{where}: unknown architecture model_type={model_type!r} (architectures={archs}); "
                f"emjax supports {SUPPORTED_MODEL_TYPES}")

        def need(key: str):
            if key not in hf or hf[key] is None:
                raise ConfigError(f"{where}: missing key {key!r} for model_type={model_type!r}")
            return hf[key]

        d, h = int(need("hidden_size")), int(need("num_attention_heads"))
        common = dict(
            vocab_size=int(need("vocab_size")), d_model=d, n_layers=int(need("num_hidden_layers")),
            n_heads=h, n_kv_heads=int(hf.get("num_key_value_heads") or h),
            head_dim=int(hf.get("head_dim") or d // h), ffn_dim=int(need("intermediate_size")),
            rope_theta=float(_rope_theta(hf)), norm_eps=float(need("rms_norm_eps")))
        if model_type == "qwen2":
            if hf.get("use_sliding_window"):
                raise ConfigError(f"{where}: use_sliding_window=true is not supported for qwen2")
            act = hf.get("hidden_act", "silu")
            if act != "silu":
                raise ConfigError(f"{where}: hidden_act={act!r} not supported for qwen2 (expected 'silu')")
            return cls(family="qwen2", tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                       qkv_bias=True, **common)
        # gemma2
        n = common["n_layers"]
        layer_types = hf.get("layer_types")
        if layer_types:
            sliding = tuple(t == "sliding_attention" for t in layer_types)
        else:  # HF default: even layers slide
            sliding = tuple(i % 2 == 0 for i in range(n))
        act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
        if act not in ("gelu_pytorch_tanh", "gelu"):  # Gemma configs say "gelu" but mean tanh
            raise ConfigError(f"{where}: hidden_activation={act!r} not supported for gemma2")
        return cls(family="gemma2", tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
                   qkv_bias=bool(hf.get("attention_bias", False)),
                   query_pre_attn_scalar=float(need("query_pre_attn_scalar")),
                   attn_softcap=_opt_float(hf.get("attn_logit_softcapping")),
                   final_softcap=_opt_float(hf.get("final_logit_softcapping")),
                   sliding_window=int(need("sliding_window")), sliding_layers=sliding,
                   activation="gelu_tanh", **common)


def _opt_float(x) -> float | None:
    return None if x is None else float(x)


def _rope_theta(hf: dict) -> float:
    if "rope_theta" in hf and hf["rope_theta"] is not None:
        return hf["rope_theta"]
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if params.get("rope_type", "default") not in ("default", None):
        raise ConfigError(f"rope scaling {params.get('rope_type')!r} is not supported")
    return params.get("rope_theta", 10000.0)


def _gemma2_sliding(n: int) -> tuple[bool, ...]:
    return tuple(i % 2 == 0 for i in range(n))


# Full-size shapes of the models the paper uses, with their published parameter counts
# (Hugging Face model cards / safetensors metadata) checked in tests/test_config.py.
PRESETS: dict[str, ModelConfig] = {
    "qwen2.5-14b-instruct": ModelConfig(
        family="qwen2", vocab_size=152064, d_model=5120, n_layers=48, n_heads=40, n_kv_heads=8,
        head_dim=128, ffn_dim=13824, rope_theta=1e6, norm_eps=1e-6, tie_embeddings=False, qkv_bias=True),
    "qwen2.5-0.5b-instruct": ModelConfig(
        family="qwen2", vocab_size=151936, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2,
        head_dim=64, ffn_dim=4864, rope_theta=1e6, norm_eps=1e-6, tie_embeddings=True, qkv_bias=True),
    # The embedded GGUF (Qwen2.5-Coder-0.5B-Instruct) ships a separate output.weight.
    "qwen2.5-coder-0.5b-instruct-gguf": ModelConfig(
        family="qwen2", vocab_size=151936, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2,
        head_dim=64, ffn_dim=4864, rope_theta=1e6, norm_eps=1e-6, tie_embeddings=False, qkv_bias=True),
    "gemma-2-9b-it": ModelConfig(
        family="gemma2", vocab_size=256000, d_model=3584, n_layers=42, n_heads=16, n_kv_heads=8,
        head_dim=256, ffn_dim=14336, rope_theta=10000.0, norm_eps=1e-6, tie_embeddings=True,
        qkv_bias=False, query_pre_attn_scalar=256.0, attn_softcap=50.0, final_softcap=30.0,
        sliding_window=4096, sliding_layers=_gemma2_sliding(42), activation="gelu_tanh"),
}


# The dtypes a model can be loaded in, by the names configs and the command line use.
DTYPES = {"float32": "float32", "bfloat16": "bfloat16"}


def resolve_dtype(name: str) -> str:
    """"auto" -> "bfloat16" on GPU/TPU, "float32" on CPU (ours: bf16 is what the accelerators run fast
    and what the paper's models were trained in; CPUs have no fast bf16 matmul); other names are
    checked (ConfigError) and returned as given."""
    if name == "auto":
        import jax
        return "bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32"
    dtype_from_name(name)
    return name


def dtype_from_name(name: str):
    """"float32" / "bfloat16" (or "auto", see `resolve_dtype`) -> the jnp dtype; ConfigError for
    anything else."""
    import jax.numpy as jnp
    if name == "auto":
        name = resolve_dtype(name)
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose from {sorted(DTYPES)}")
    return jnp.dtype(DTYPES[name])


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None
