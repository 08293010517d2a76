"""Model configuration: a decoder block described by its features, not by its family's name.

A `ModelConfig` is a frozen, hashable dataclass, so it can be a static argument of `jax.jit`.
Every way the supported decoders differ is a feature of it (norm placement and offset, embedding
scale, biases, activation, soft-caps, sliding-window layers, query scale, RoPE scaling, tied
embeddings); the model code reads the features and never a family's name. The families
themselves are data in `emjax.model.families`: each registry entry turns a Hugging Face
`config.json` into features, names the weights where its checkpoints differ from the schema's
names, and holds its presets and GGUF mapping. `ModelConfig.from_hf` dispatches on `model_type`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Literal

from emjax.errors import EmjaxError

Activation = Literal["silu", "gelu_tanh", "gelu"]
ACTIVATIONS = ("silu", "gelu_tanh", "gelu")


class ConfigError(EmjaxError, ValueError):
    """A model config that emjax cannot run (unknown architecture, missing or bad key)."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3's RoPE frequency scaling (transformers' `_compute_llama3_parameters`): wavelengths
    longer than original_max_position_embeddings / low_freq_factor are divided by `factor`, those
    shorter than original_max_position_embeddings / high_freq_factor are kept, and the band
    between is interpolated smoothly. The only scaling emjax implements (kind "llama3")."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    kind: Literal["llama3"] = "llama3"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes, block features and numerics of one decoder-only transformer.

    Attributes:
      family: the registry entry (`emjax.model.families`) the config belongs to, e.g. "qwen2":
        it names the checkpoint's weights and labels logs; the block is described by the
        features below only.
      vocab_size: rows of the embedding matrix (may exceed the tokenizer's vocabulary).
      d_model: residual-stream width D.
      n_layers: number of decoder blocks L.
      n_heads / n_kv_heads / head_dim: grouped-query attention shapes.
      ffn_dim: hidden width F of the gated MLP.
      rope_theta: RoPE base frequency (rotate-half convention).
      rope_scaling: a `RopeScaling` of the frequencies (Llama-3), or None.
      norm_eps: RMSNorm epsilon.
      norm_plus_one: RMSNorm scales by (1 + w) in float32, then casts (Gemma); else it casts, then
        scales by w (Llama, Qwen2).
      post_attn_norm / post_mlp_norm: an RMSNorm on the attention / MLP branch output before the
        residual add (Gemma-2's sandwich norms; 4 norms per block instead of 2).
      embed_scale: the embedding output is multiplied by sqrt(d_model), rounded to the activation
        dtype first (Gemma).
      tie_embeddings: the unembedding is the transposed embedding (no `lm_head` weight).
      qkv_bias / o_bias: the q/k/v projections / the o projection carry biases.
      activation: gate activation of the gated MLP, "silu" (SwiGLU), "gelu_tanh" (GeGLU with
        the tanh approximation) or "gelu" (GeGLU, exact erf GELU).
      query_pre_attn_scalar: attention scale is this ** -0.5 (Gemma-2); None: head_dim ** -0.5.
      attn_softcap / final_softcap: `c * tanh(x / c)` on attention / final logits, or None.
      sliding_window: window size W for sliding layers: a query at position p sees keys at
        positions > p - W.
      sliding_layers: per layer, whether it uses the sliding window (Gemma-2: even layers).
    """

    family: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    norm_eps: float = 1e-6
    norm_plus_one: bool = False
    post_attn_norm: bool = False
    post_mlp_norm: bool = False
    embed_scale: bool = False
    tie_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    activation: Activation = "silu"
    query_pre_attn_scalar: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    sliding_window: int | None = None
    sliding_layers: tuple[bool, ...] = ()

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}; choose from {ACTIVATIONS}")
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
    def attn_scale(self) -> float:
        """Multiplier of q.k: query_pre_attn_scalar**-0.5 if set, else head_dim**-0.5."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def middle_layer(self) -> int:
        """The paper's "layer 24 of 48", generalised to L // 2."""
        return self.n_layers // 2

    def replace(self, **kw: Any) -> "ModelConfig":
        """A copy with fields changed; a new layer count cuts or repeats the sliding pattern
        (Gemma-2's even layers stay even) unless `sliding_layers` is given too."""
        if "n_layers" in kw and "sliding_layers" not in kw:
            old = self.sliding_layers
            kw["sliding_layers"] = tuple(old[i % len(old)] for i in range(kw["n_layers"])) if any(old) else ()
        return dataclasses.replace(self, **kw)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_hf(cls, hf: dict[str, Any] | str | os.PathLike, *, source: str | None = None) -> "ModelConfig":
        """Builds a config from a Hugging Face `config.json` (a dict, a file or its folder), through
        the registry entry of its `model_type`.

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
        if not isinstance(hf, dict):
            raise ConfigError(f"{where}: expected a JSON object of settings, got {type(hf).__name__}")
        model_type = hf.get("model_type")
        if model_type not in FAMILY_BUILDERS:
            raise ConfigError(
                f"{where}: unknown architecture model_type={model_type!r} (architectures="
                f"{hf.get('architectures')}); emjax supports {tuple(FAMILY_BUILDERS)}")
        return FAMILY_BUILDERS[model_type](HFConfig(hf, where))


@dataclasses.dataclass(frozen=True)
class HFConfig:
    """A Hugging Face `config.json` being read by a registry entry: keys with errors that name the
    file, and the fields every family shares."""

    raw: dict[str, Any]
    where: str

    @property
    def model_type(self) -> str:
        return self.raw["model_type"]

    def need(self, key: str) -> Any:
        if key not in self.raw or self.raw[key] is None:
            raise ConfigError(f"{self.where}: missing key {key!r} for model_type={self.model_type!r}")
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.raw.get(key)
        return default if value is None else value

    def fail(self, what: str) -> ConfigError:
        return ConfigError(f"{self.where}: {what} (model_type={self.model_type!r})")

    def count(self, key: str, default: Any = None) -> int:
        """A positive integer (a shape) at `key`; ConfigError naming the key otherwise."""
        value = self.need(key) if default is None else self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(f"{key}={value!r} is not a positive integer")
        return value

    def common(self, head_dim_default: int | None = None) -> dict[str, Any]:
        """Shapes, RoPE and norm epsilon: `ModelConfig` fields every family reads the same way.
        head_dim_default: the family's default where `head_dim` is absent (None: hidden / heads)."""
        d, h = self.count("hidden_size"), self.count("num_attention_heads")
        kv = self.count("num_key_value_heads", h)
        if h % kv:
            raise self.fail(f"num_attention_heads={h} is not a multiple of num_key_value_heads={kv}")
        theta, scaling = self.rope()
        return dict(family=self.model_type, vocab_size=self.count("vocab_size"), d_model=d,
                    n_layers=self.count("num_hidden_layers"), n_heads=h, n_kv_heads=kv,
                    head_dim=self.count("head_dim", head_dim_default or max(d // h, 1)),
                    ffn_dim=self.count("intermediate_size"), rope_theta=theta, rope_scaling=scaling,
                    norm_eps=float(self.need("rms_norm_eps")))

    def rope(self) -> tuple[float, RopeScaling | None]:
        """(theta, scaling) from `rope_theta` / `rope_scaling` (transformers 4) or
        `rope_parameters` (transformers 5, which holds the theta too)."""
        params = {**(self.raw.get("rope_scaling") or {}), **(self.raw.get("rope_parameters") or {})}
        theta = float(self.get("rope_theta", params.get("rope_theta", 10000.0)))
        kind = params.get("rope_type", params.get("type")) or "default"
        if kind == "default":
            return theta, None
        if kind != "llama3":
            raise self.fail(f"rope scaling {kind!r} is not supported (emjax implements 'default' and 'llama3')")
        try:
            return theta, RopeScaling(float(params["factor"]), float(params["low_freq_factor"]),
                                      float(params["high_freq_factor"]),
                                      int(params["original_max_position_embeddings"]))
        except KeyError as e:
            raise self.fail(f"rope scaling 'llama3' lacks {e.args[0]!r}") from None

    def check(self, key: str, allowed: tuple, default: Any = None) -> Any:
        """The value of `key`, ConfigError unless it is one of `allowed`."""
        value = self.get(key, default)
        if value not in allowed:
            raise self.fail(f"{key}={value!r} is not supported (expected one of {allowed})")
        return value


def opt_float(x) -> float | None:
    return None if x is None else float(x)


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


# The registry entries (emjax.model.families, imported by the emjax.model package) fill these two
# on import: this module names no family and imports none of them (no import circle).
FAMILY_BUILDERS: dict[str, Callable[["HFConfig"], ModelConfig]] = {}  # model_type -> config builder
PRESETS: dict[str, ModelConfig] = {}  # full-size configs of named models


def register_family(model_type: str, builder: Callable[["HFConfig"], ModelConfig],
                    presets: dict[str, ModelConfig]) -> None:
    """Makes `ModelConfig.from_hf` read `model_type` with `builder`, and `preset` know `presets`."""
    FAMILY_BUILDERS[model_type] = builder
    PRESETS.update(presets)


def preset(name: str) -> ModelConfig:
    """The full-size config of a named model (the presets of the registry entries)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None
