"""Read a GGUF checkpoint (llama.cpp format) into Hugging Face names, shapes and config.

`load_gguf(path)` parses the header with `gguf.GGUFReader` (memory-mapped; nothing is
dequantized up front) and validates it: known architecture, required metadata, every expected
tensor present with the expected shape, and tensor data inside the file. `iter_tensors()` then
dequantizes ONE tensor at a time with `gguf.quants.dequantize`, so peak memory is the largest
single tensor (the 151936 x 896 embedding, 0.5 GB in float32), not the whole model.

Layout: GGUF stores dims fastest-first (`ne0` = the input/contiguous dim), so a Linear weight of
PyTorch shape [out, in] is listed as `shape == [in, out]`. `GGUFReader` already builds
`tensor.data` with numpy (row-major) dims, i.e. reversed to [out, in] (for quantized types the
last dim is in bytes), and `dequantize` returns [out, in] float32 - the PyTorch/HF layout, with
no transpose needed. For `qwen2` llama.cpp uses NEOX (rotate-half) RoPE, exactly like HF, so
q/k rows are stored unpermuted (unlike the llama arch, where the converter permutes them).
Both facts are checked against transformers in tests/test_gguf.py.

The architectures read are those of the registry entries with a GGUF mapping
(`emjax.model.families`, `Family.gguf`: today `qwen2`); anything else raises `GGUFError`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from emjax.errors import EmjaxError
from emjax.model.config import ModelConfig
from emjax.model.families import FAMILIES, GGUFMapping, gguf_family
from emjax.model.schema import gguf_to_hf_name, hf_shapes

SUPPORTED_ARCHS = tuple(f.gguf.arch for f in FAMILIES.values() if f.gguf is not None)
_GGUF_MAGIC = b"GGUF"

class GGUFError(EmjaxError, ValueError):
    """A GGUF file that cannot be read: unreadable, truncated, corrupt or unsupported."""


@dataclasses.dataclass(frozen=True)
class _TensorRef:
    """Where one tensor lives in the file, under its HF name."""

    gguf_name: str
    index: int  # into GGUFReader.tensors
    qtype: str  # GGML type name, e.g. "Q4_K"
    hf_shape: tuple[int, ...]  # PyTorch layout, e.g. (out, in)


class GGUFCheckpoint:
    """A parsed, validated GGUF file; tensors are dequantized lazily, one at a time.

    Attributes:
      path: the file.
      hf_config: Hugging Face `config.json`-style dict (usable with `ModelConfig.from_hf`).
      metadata: every scalar/string metadata field (arrays such as the vocabulary are omitted).
    """

    def __init__(self, path: Path, reader: Any, hf_config: dict[str, Any],
                 metadata: dict[str, Any], refs: dict[str, _TensorRef]):
        self.path = path
        self.hf_config = hf_config
        self.metadata = metadata
        self._reader = reader
        self._refs = refs

    def __repr__(self) -> str:
        return f"GGUFCheckpoint({str(self.path)!r}, arch={self.hf_config['model_type']!r}, tensors={len(self._refs)})"

    @property
    def reader(self) -> Any:
        """The underlying `gguf.GGUFReader` (memory-mapped), for raw access to the file."""
        return self._reader

    def tensor_names(self) -> list[str]:
        """HF names in model order: embedding, layers 0..L-1, final norm, lm_head."""
        return list(self._refs)

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        """HF (PyTorch) shape of tensor `name`, without reading its data."""
        return self._ref(name).hf_shape

    def tensor_type(self, name: str) -> str:
        """GGML storage type of tensor `name` ("F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0", ...)."""
        return self._ref(name).qtype

    def get_tensor(self, name: str, dtype: npt.DTypeLike = np.float32) -> np.ndarray:
        """Dequantize one tensor into a fresh array of HF shape (e.g. [out, in] for a Linear)."""
        ref = self._ref(name)
        arr = _dequantize(self._reader.tensors[ref.index], self.path)
        if arr.shape != ref.hf_shape:  # guards the layout reasoning in the module docstring
            raise GGUFError(f"{self.path}: tensor {ref.gguf_name} dequantized to shape {arr.shape}, "
                            f"expected {ref.hf_shape}")
        return arr.astype(dtype, copy=False)

    def iter_tensors(self, dtype: npt.DTypeLike = np.float32) -> Iterator[tuple[str, np.ndarray]]:
        """Yield `(hf_name, array)` one tensor at a time, in `tensor_names()` order.

        Shapes (V vocab, D hidden, F ffn, H/K query/kv heads, hd head dim):
          model.embed_tokens.weight, lm_head.weight: [V, D]
          ...self_attn.q_proj.weight [H*hd, D], .bias [H*hd]; k_proj/v_proj [K*hd, D], [K*hd]
          ...self_attn.o_proj.weight [D, H*hd]
          ...mlp.gate_proj/up_proj.weight [F, D]; mlp.down_proj.weight [D, F]
          ...input_layernorm/post_attention_layernorm.weight, model.norm.weight: [D]
        Each array is dequantized on demand and owned by the caller.
        """
        for name in self._refs:
            yield name, self.get_tensor(name, dtype)

    def _ref(self, name: str) -> _TensorRef:
        try:
            return self._refs[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor {name!r}; have {len(self._refs)} tensors, "
                           f"e.g. {list(self._refs)[:3]}") from None


def load_gguf(path: str | os.PathLike) -> GGUFCheckpoint:
    """Parse and validate a GGUF file (no tensor data is read yet).

    Raises:
      GGUFError: the file is missing/unreadable, has a bad magic, is truncated or corrupt, has an
        unsupported architecture, lacks metadata, or lacks/misshapes a tensor.
    """
    path = Path(path)
    reader = _open_reader(path)
    metadata = _scalar_metadata(reader, path)
    arch = metadata.get("general.architecture")
    family = gguf_family(arch)
    if family is None:
        raise GGUFError(f"{path}: unsupported GGUF architecture {arch!r}; emjax reads {SUPPORTED_ARCHS}")
    _check_tensor_bounds(reader, path)
    hf_config = _hf_config(reader, metadata, path, family.gguf)
    refs = _tensor_refs(reader, hf_config, path)
    return GGUFCheckpoint(path, reader, hf_config, metadata, refs)


# Pre-tokenizer split of Qwen2's byte-level BPE (as in its tokenizer.json / llama.cpp "qwen2").
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
               r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
_CONTROL, _USER_DEFINED = 3, 4  # GGUF token types


def _array_field(reader: Any, key: str, path: Path) -> list:
    from gguf import GGUFValueType
    field = reader.fields.get(key)
    if field is None:
        raise GGUFError(f"{path}: metadata field {key!r} is missing")
    if field.types and field.types[-1] == GGUFValueType.STRING:
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    return [field.parts[i][0].item() for i in field.data]


def gguf_tokenizer(path: str | os.PathLike) -> Any:
    """A `transformers` fast tokenizer built from the GGUF's vocabulary, merges and chat template.

    Built directly with `tokenizers` (byte-level BPE, Qwen2's pre-tokenizer split, control tokens
    as special tokens), so it needs no PyTorch: transformers' own GGUF loader imports torch.
    """
    path = Path(path)
    _check_magic(path)
    reader = _open_reader(path)
    meta = _scalar_metadata(reader, path)
    model, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre")
    if model != "gpt2" or pre not in ("qwen2", None):
        raise GGUFError(f"{path}: tokenizer {model!r} / pre-tokenizer {pre!r} not supported "
                        "(emjax builds Qwen2's byte-level BPE)")
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = _array_field(reader, "tokenizer.ggml.tokens", path)
    merges = [tuple(m.split(" ", 1)) for m in _array_field(reader, "tokenizer.ggml.merges", path)]
    types = _array_field(reader, "tokenizer.ggml.token_type", path)
    bpe = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, k in zip(tokens, types) if k == _CONTROL])
    bpe.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, k in zip(tokens, types) if k == _USER_DEFINED])

    def token(key):
        i = meta.get(f"tokenizer.ggml.{key}")
        return tokens[i] if i is not None else None

    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=token("bos_token_id"),
                                  eos_token=token("eos_token_id"), pad_token=token("padding_token_id"),
                                  unk_token=token("unknown_token_id"))
    template = meta.get("tokenizer.chat_template")
    if template:
        tok.chat_template = template
    return tok


# --------------------------------------------------------------------------------------------
# Parsing and validation
# --------------------------------------------------------------------------------------------


def _check_magic(path: Path) -> int:
    """Fail fast, with a clear message, on files that are not GGUF at all. Returns the size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise GGUFError(f"{path}: cannot read GGUF file: {e}") from e
    if magic != _GGUF_MAGIC:
        raise GGUFError(f"{path}: not a GGUF file: bad magic {magic!r} (expected {_GGUF_MAGIC!r}, "
                        f"file is {size} bytes)")
    return size


def _open_reader(path: Path) -> Any:
    size = _check_magic(path)
    st = os.stat(path)
    return _cached_reader(str(path), size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _cached_reader(path_text: str, size: int, mtime_ns: int) -> Any:
    """The parsed reader of one file version: gguf-py's metadata parse takes ~15 s for a
    151k-token vocabulary on one CPU core, and a load reads the file for its config, its tokenizer
    and its weights (read-only memory map: sharing the reader is safe)."""
    path = Path(path_text)
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path, "r")
    except Exception as e:  # IndexError/ValueError/KeyError/UnicodeDecodeError on bad bytes
        raise GGUFError(f"{path}: truncated or corrupt GGUF ({size} bytes): "
                        f"{_reader_failure_stage(e)} ({type(e).__name__}: {e})") from e
    if reader.byte_order != "I":  # quantized blocks would be misread on a byte-swapped file
        raise GGUFError(f"{path}: GGUF file has non-native byte order; convert it first")
    return reader


def _reader_failure_stage(exc: BaseException) -> str:
    """Which part of the file GGUFReader choked on, from the deepest reader method in the
    traceback (its raw errors, e.g. "cannot reshape array", do not say)."""
    stage, tensor = None, None
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name in ("_build_fields", "_build_tensor_info", "_build_tensors"):
            stage = code.co_name
            tensor = tb.tb_frame.f_locals.get("tensor_name")
        tb = tb.tb_next
    if stage == "_build_tensors":
        where = f" of tensor {tensor!r}" if isinstance(tensor, str) else ""
        return f"tensor data{where} extends past the end of the file"
    if stage == "_build_tensor_info":
        return "the tensor index is cut off or corrupt"
    if stage == "_build_fields":
        return "the metadata is cut off or corrupt"
    return "could not parse the header"


def _check_tensor_bounds(reader: Any, path: Path) -> None:
    """Every tensor's bytes must lie inside the file (catches truncation after the index)."""
    size = int(reader.data.shape[0])
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size or t.data.nbytes != t.n_bytes:
            raise GGUFError(f"{path}: truncated GGUF: tensor {t.name} needs bytes up to {end}, "
                            f"file has {size}")


def _field_value(field: Any) -> Any:
    """Python value of a scalar or string field; None for arrays."""
    from gguf import GGUFValueType

    kind = field.types[0] if field.types else None
    if kind is None or kind == GGUFValueType.ARRAY:
        return None
    raw = field.parts[field.data[0]]
    if kind == GGUFValueType.STRING:
        return bytes(raw).decode("utf-8")
    if kind == GGUFValueType.FLOAT32:
        # Shortest decimal that round-trips in float32: 1e-06, not 9.999999974752427e-07.
        return float(str(np.float32(raw[0])))
    return raw[0].item()


def _scalar_metadata(reader: Any, path: Path) -> dict[str, Any]:
    out = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):  # reader's pseudo-fields (version, counts)
            continue
        try:
            value = _field_value(field)
        except (UnicodeDecodeError, IndexError) as e:
            raise GGUFError(f"{path}: corrupt metadata field {key!r}: {e}") from e
        if value is not None:
            out[key] = value
    return out


def _read_string_field(path: Path, key: str) -> str | None:
    return _scalar_metadata(_open_reader(path), path).get(key)


def _hf_config(reader: Any, meta: dict[str, Any], path: Path, mapping: GGUFMapping) -> dict[str, Any]:
    """HF `config.json` fields of a GGUF (what transformers' GGUF loader also derives): the shapes
    from the `{arch}.*` metadata, the rest fixed by the family's mapping."""
    arch = mapping.arch

    def need(key: str) -> Any:
        full = f"{arch}.{key}"
        if full not in meta:
            raise GGUFError(f"{path}: missing metadata {full!r} for architecture {arch!r}")
        return meta[full]

    names = {t.name for t in reader.tensors}
    if "token_embd.weight" not in names:
        raise GGUFError(f"{path}: missing tensor 'token_embd.weight'")
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    d, heads = int(need("embedding_length")), int(need("attention.head_count"))
    cfg = {
        **mapping.fixed,
        "hidden_size": d,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        "head_dim": d // heads,
        "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        "vocab_size": int(embd.shape[1]),  # ne1 of token_embd = rows of the HF embedding
        "max_position_embeddings": int(need("context_length")),
        "tie_word_embeddings": "output.weight" not in names,
    }
    for key in ("bos_token_id", "eos_token_id", "padding_token_id"):
        if f"tokenizer.ggml.{key}" in meta:
            cfg[key.replace("padding", "pad")] = int(meta[f"tokenizer.ggml.{key}"])
    if d % heads:
        raise GGUFError(f"{path}: embedding_length {d} is not a multiple of head_count {heads}")
    # What llama.cpp would apply and this plain-RoPE config would not: refused, never dropped.
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise GGUFError(f"{path}: metadata {arch}.rope.scaling.type={scaling!r}: RoPE scaling in a GGUF is "
                        "not supported")
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        value = meta.get(f"{arch}.{key}")
        if value is not None and int(value) != cfg["head_dim"]:
            raise GGUFError(f"{path}: metadata {arch}.{key}={value} differs from embedding_length / head_count = "
                            f"{cfg['head_dim']}: not supported")
    return cfg


def qwen2_hf_name(gguf_name: str, cfg: ModelConfig | None = None) -> str | None:
    """HF name of a GGUF tensor, e.g. blk.3.attn_q.bias -> model.layers.3.self_attn.q_proj.bias
    (the GGUF names are declared in the weight schema, `emjax.model.schema`)."""
    return gguf_to_hf_name(gguf_name, cfg)


def _tensor_refs(reader: Any, cfg: dict[str, Any], path: Path) -> dict[str, _TensorRef]:
    """Map every GGUF tensor to its HF name and check the set and shapes are exactly the config's."""
    model_cfg = ModelConfig.from_hf(cfg, source=str(path))
    expected = hf_shapes(model_cfg)
    found: dict[str, _TensorRef] = {}
    for i, t in enumerate(reader.tensors):
        hf = gguf_to_hf_name(t.name, model_cfg)
        if hf is None or hf not in expected:
            raise GGUFError(f"{path}: unexpected tensor {t.name!r} for a {model_cfg.family} model with "
                            f"{cfg['num_hidden_layers']} layers")
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # ne0-first -> row-major
        if shape != expected[hf]:
            raise GGUFError(f"{path}: tensor {t.name} has shape {shape} (HF layout), "
                            f"expected {expected[hf]}")
        found[hf] = _TensorRef(t.name, i, t.tensor_type.name, shape)
    missing = [k for k in expected if k not in found]
    if missing:
        raise GGUFError(f"{path}: {len(missing)} tensors missing, e.g. {missing[:3]}")
    return {k: found[k] for k in expected}  # model order, not file order


def _dequantize(tensor: Any, path: Path) -> np.ndarray:
    """float32 array of a reader tensor in row-major (HF) shape; always a copy, never the mmap."""
    from gguf.quants import dequantize

    try:
        arr = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as e:
        raise GGUFError(f"{path}: tensor {tensor.name}: unsupported type {tensor.tensor_type.name}") from e
    # F32 comes back as a view of the read-only memory map; copy so callers own (and may mutate)
    # it. Quantized types are decoded into a fresh array already, so no second 0.5 GB copy.
    if np.may_share_memory(arr, tensor.data):
        arr = arr.copy()
    return arr
