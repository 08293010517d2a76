"""Loading Hugging Face folders: sharded safetensors, dtype, target shardings, clear errors."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from hf_reference import build_hf, gemma2_config, qwen2_config, to_emjax, torch
from emjax import model as M
from emjax.model.config import ConfigError, ModelConfig
from emjax.model.sharding import DEFAULT_RULES, Rule, ShardingError, make_mesh, weight_shardings
from emjax.checkpoints.hf import load_hf_folder
from emjax.checkpoints.safetensors_file import CheckpointError, SafetensorsFile, write_safetensors


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    hf = build_hf(qwen2_config(tied=False), seed=5)
    path = tmp_path_factory.mktemp("qwen")
    hf.save_pretrained(path, safe_serialization=True, max_shard_size="100KB")  # several shards
    return hf, path


def test_sharded_folder_loads_exactly(qwen_folder):
    hf, path = qwen_folder
    assert os.path.exists(path / "model.safetensors.index.json")
    cfg, w = load_hf_folder(str(path), dtype=jnp.float32)
    _, ref = to_emjax(hf)
    for a, b in zip(jax.tree.leaves(w), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bf16_folder_and_dtype_conversion(tmp_path):
    hf = build_hf(gemma2_config(), seed=6)
    hf.to(torch.bfloat16).save_pretrained(tmp_path, safe_serialization=True)
    f = SafetensorsFile(tmp_path / "model.safetensors")
    assert f.get("model.norm.weight").dtype == ml_dtypes.bfloat16
    cfg, w = load_hf_folder(str(tmp_path), dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(w))
    ref = hf.model.layers[1].mlp.down_proj.weight.detach().float().numpy().T
    np.testing.assert_array_equal(np.asarray(w.layers.down_proj[1], np.float32), ref)
    _, w32 = load_hf_folder(str(tmp_path), dtype=jnp.float32)
    np.testing.assert_array_equal(np.asarray(w32.layers.down_proj[1]), ref)


def test_load_with_target_shardings(qwen_folder):
    hf, path = qwen_folder
    cfg = ModelConfig.from_hf(str(path))
    mesh = make_mesh({"fsdp": 2, "tensor": 4})
    # the tiny vocabulary (211) does not split over 4 devices: the default rules refuse, naming
    # the weight; a rule that allows replication places it whole
    with pytest.raises(ShardingError, match=r"weight embed \(211, 64\): dimension 0 \('vocab', size 211\)"):
        weight_shardings(cfg, mesh)
    rules = {**DEFAULT_RULES, "vocab": Rule("tensor", replicate_if_indivisible=True)}
    sh = weight_shardings(cfg, mesh, rules)
    assert tuple(sh.embed.spec) == (None, "fsdp")
    _, w = load_hf_folder(str(path), dtype=jnp.float32, shardings=sh)
    assert w.layers.q_proj.sharding.spec == sh.layers.q_proj.spec
    assert w.layers.q_proj.sharding.spec[1] == "fsdp" and w.layers.q_proj.sharding.spec[2] == "tensor"
    assert len(w.layers.q_proj.addressable_shards) == 8
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 8)))
    _, ref = to_emjax(hf)
    np.testing.assert_allclose(np.asarray(M.forward(w, cfg, tokens)), np.asarray(M.forward(ref, cfg, tokens)),
                               atol=1e-5)


def test_sharded_load_reads_only_each_devices_slices(qwen_folder):
    """With target shardings, each device's slice is read from the memory-mapped file (never the
    whole tensor for a sharded leaf), and the result equals the plain load."""
    from emjax.checkpoints.hf import weights_from_slices
    from emjax.checkpoints.safetensors_file import open_folder
    hf, path = qwen_folder
    cfg = ModelConfig.from_hf(str(path))
    rules = {**DEFAULT_RULES, "vocab": Rule("tensor", replicate_if_indivisible=True)}
    sh = weight_shardings(cfg, make_mesh({"fsdp": 2, "tensor": 4}), rules)
    where = open_folder(str(path))
    reads = []

    def read(name, index):
        part = where[name].get(name)[index]
        reads.append((name, part.size, int(np.prod(where[name].shape(name)))))
        return part
    w = weights_from_slices(cfg, read, {n: f.shape(n) for n, f in where.items()}, shardings=sh, dtype=jnp.float32)
    _, ref = load_hf_folder(str(path), dtype=jnp.float32)
    for a, b in zip(jax.tree.leaves(w), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    q = [(size, full) for name, size, full in reads if name.endswith("self_attn.q_proj.weight")]
    assert q and all(size == full // 8 for size, full in q)  # fsdp x tensor: an eighth per device
    norms = [(size, full) for name, size, full in reads if name.endswith("input_layernorm.weight")]
    assert norms and all(size == full for size, full in norms)  # replicated leaves: whole


def _single_file_copy(hf, tmp_path, edit):
    """Saves hf as one safetensors file after applying edit(dict) to its tensors."""
    hf.save_pretrained(tmp_path, safe_serialization=True)
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    edit(sd)
    write_safetensors(tmp_path / "model.safetensors", sd)
    return str(tmp_path)


def test_missing_tensor_is_named(qwen_folder, tmp_path):
    hf, _ = qwen_folder
    folder = _single_file_copy(hf, tmp_path, lambda sd: sd.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.1\.mlp\.up_proj\.weight"):
        load_hf_folder(folder)


def test_unexpected_tensor_is_named(qwen_folder, tmp_path):
    hf, _ = qwen_folder
    folder = _single_file_copy(hf, tmp_path, lambda sd: sd.update({"model.layers.0.extra.weight": np.ones(3, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensors.*model\.layers\.0\.extra\.weight"):
        load_hf_folder(folder)


def test_shape_mismatch_names_tensor_and_shapes(qwen_folder, tmp_path):
    hf, _ = qwen_folder
    def edit(sd):
        sd["model.layers.2.self_attn.k_proj.weight"] = np.zeros((5, 64), np.float32)
    folder = _single_file_copy(hf, tmp_path, edit)
    with pytest.raises(CheckpointError, match=r"k_proj\.weight.*shape \(5, 64\), expected \(32, 64\)"):
        load_hf_folder(folder)


def test_a_tied_config_with_another_stored_head_is_refused(qwen_folder, tmp_path):
    hf, _ = qwen_folder  # untied: its lm_head differs from the embedding
    def tie(folder):
        c = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**c, "tie_word_embeddings": True}))
        return str(folder)
    _single_file_copy(hf, tmp_path / "a", lambda sd: None)
    folder = tie(tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"ties the output head.*stores an 'lm_head.weight' that differs"):
        load_hf_folder(folder)
    # the same head as the embedding (a tied model saved with its head): loads, tied
    _single_file_copy(hf, tmp_path / "b", lambda sd: sd.update({"lm_head.weight": sd["model.embed_tokens.weight"]}))
    cfg, w = load_hf_folder(tie(tmp_path / "b"), dtype=jnp.float32)
    assert cfg.tie_embeddings and w.lm_head is None


def test_errors_name_the_shard_and_refuse_integer_weights(qwen_folder, tmp_path):
    hf, path = qwen_folder  # several shards
    name = "model.layers.1.mlp.up_proj.weight"
    shard = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"][name]
    folder = tmp_path / "f"
    shutil.copytree(path, folder)
    tensors = {n: SafetensorsFile(folder / shard).get(n) for n in SafetensorsFile(folder / shard).names()}
    write_safetensors(folder / shard, {**tensors, name: np.asarray(tensors[name]).astype(np.int8)})
    for shardings in (None, weight_shardings(ModelConfig.from_hf(str(folder)), make_mesh({"data": 8}))):
        with pytest.raises(CheckpointError, match=rf"{folder / shard}: tensor '{name}' is stored as int8, not a float"):
            load_hf_folder(str(folder), shardings=shardings)
    write_safetensors(folder / shard, {**tensors, name: np.zeros((3, 3), np.float32)})
    with pytest.raises(CheckpointError, match=rf"{folder / shard}: tensor '{name}' has shape \(3, 3\)"):
        load_hf_folder(str(folder))


def test_truncated_and_corrupt_files(qwen_folder, tmp_path):
    hf, _ = qwen_folder
    folder = _single_file_copy(hf, tmp_path, lambda sd: None)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_hf_folder(folder)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        load_hf_folder(folder)
    path.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="truncated"):
        load_hf_folder(folder)


def test_refuses_pickled_weights(qwen_folder, tmp_path):
    hf, path = qwen_folder
    shutil.copy(path / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="pickled"):
        load_hf_folder(str(tmp_path))


def test_unknown_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ConfigError, match=r"config\.json: unknown architecture model_type='gpt2'"):
        load_hf_folder(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2", "hidden_size": 8}))
    with pytest.raises(ConfigError, match="config.json: missing key 'num_attention_heads'"):
        ModelConfig.from_hf(str(tmp_path))


def test_load_model_without_tokenizer_files(qwen_folder, tmp_path):
    """save_pretrained writes no tokenizer: load_model says so, naming the folder; the weights
    still load with tokenizer=False."""
    from emjax.checkpoints.load import MissingTokenizerError, load_model

    hf, path = qwen_folder
    assert not any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "vocab.json"))
    with pytest.raises(MissingTokenizerError, match=rf"{path}: no tokenizer files .*tokenizer=False"):
        load_model(str(path), progress=False)
    m = load_model(str(path), progress=False, tokenizer=False)
    assert m.tokenizer is None and m.source == str(path)
    _, ref = to_emjax(hf)
    for a, b in zip(jax.tree.leaves(m.weights), jax.tree.leaves(ref)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # tokenizer files without a chat template: named too
    folder = tmp_path / "no_template"
    shutil.copytree(path, folder)
    (folder / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(MissingTokenizerError, match=rf"{folder}: "):
        load_model(str(folder), progress=False)
