"""The registry of model families: everything that differs between decoder families, as data.

A `Family` entry holds, for one Hugging Face `model_type`:
  * `config`: the builder of a `ModelConfig` from `config.json` (an `HFConfig`): the block
    features the family uses and the keys it refuses;
  * `hf_names`: the Hugging Face names of the weights where they differ from the weight schema's
    (`emjax.model.schema`, which uses the Llama/Qwen2 layout);
  * `gguf`: how a llama.cpp GGUF of the family is read (`GGUFMapping`), or None;
  * `presets`: full-size configs of named models.

Nothing outside these entries asks which family a config is: the decoder, the schema, the
hooks, the memory estimate and the loaders read the features of the `ModelConfig`
(`ModelConfig.family` only selects the entry, for weight names, and labels logs). To add a
family, add a module here with its entry and list it in `FAMILIES` (docs/design.md).
"""

from __future__ import annotations

from emjax.model.config import PRESETS, ConfigError, ModelConfig, register_family
from emjax.model.families.entry import Family, GGUFMapping
from emjax.model.families import gemma2, llama, qwen2

FAMILIES: dict[str, Family] = {f.model_type: f for f in (qwen2.FAMILY, gemma2.FAMILY, llama.FAMILY)}

for _f in FAMILIES.values():  # ModelConfig.from_hf and preset() read the entries through the config module
    register_family(_f.model_type, _f.config, dict(_f.presets))


def family_of(cfg: ModelConfig) -> Family:
    """The registry entry of `cfg` (ConfigError for a family emjax does not know)."""
    try:
        return FAMILIES[cfg.family]
    except KeyError:
        raise ConfigError(f"unknown model family {cfg.family!r}; emjax supports {tuple(FAMILIES)}") from None


def gguf_family(arch: str | None) -> Family | None:
    """The entry whose GGUF mapping reads `general.architecture == arch`, or None."""
    return next((f for f in FAMILIES.values() if f.gguf is not None and f.gguf.arch == arch), None)


__all__ = ["FAMILIES", "PRESETS", "Family", "GGUFMapping", "family_of", "gguf_family"]
