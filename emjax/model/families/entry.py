"""What a registry entry of `emjax.model.families` holds."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

from emjax.model.config import HFConfig, ModelConfig


@dataclasses.dataclass(frozen=True)
class GGUFMapping:
    """How a GGUF file of a family is read: its `general.architecture`, and the Hugging Face
    config keys that are fixed for it (the shapes come from the `{arch}.*` metadata). Tensor
    names are the schema's `Leaf.gguf`; llama.cpp stores these architectures' tensors in the HF
    layout (NEOX RoPE: q/k rows not permuted, unlike its `llama` architecture)."""

    arch: str
    fixed: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family (see `emjax.model.families`).

    Attributes:
      model_type: the Hugging Face `model_type` (and `ModelConfig.family`).
      architectures: the transformers classes of its checkpoints (documentation and messages).
      config: `HFConfig` of a config.json -> `ModelConfig` (ConfigError for what emjax cannot run).
      hf_names: schema leaf name -> Hugging Face name (relative to `model.layers.{i}.` for
        per-layer leaves), where the family's checkpoints differ from the schema's names.
      gguf: how its GGUF files are read, or None (not supported).
      presets: preset name -> full-size config.
    """

    model_type: str
    architectures: tuple[str, ...]
    config: Callable[[HFConfig], ModelConfig]
    hf_names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    gguf: Optional[GGUFMapping] = None
    presets: Mapping[str, ModelConfig] = dataclasses.field(default_factory=dict)
