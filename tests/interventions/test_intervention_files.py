"""PEFT LoRA and steering-vector files: round trips, parity with `peft`, and named errors."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hf_reference import build_hf, gemma2_config, qwen2_config, to_emjax, torch
from emjax import model as M
from emjax.interventions.files import load_steering, save_steering
from emjax.interventions.peft import AdapterError, load_peft_lora, save_peft_lora
from emjax.model.config import ModelConfig
from emjax.interventions import Interventions, LoraAdapter, SteeringVectors, init_lora, init_steering
from emjax.checkpoints.safetensors_file import SafetensorsFile, write_safetensors

peft = pytest.importorskip("peft")

TOL = 1e-4
TINY = ModelConfig(family="qwen2", vocab_size=50, d_model=16, n_layers=3, n_heads=2, n_kv_heads=1,
                   head_dim=8, ffn_dim=24, qkv_bias=True)
PREFIX = "base_model.model.model.layers"


# ---------------------------------------------------------------------------------------------
# Helpers


def random_lora(cfg: ModelConfig, seed: int = 0, **kw) -> LoraAdapter:
    """init_lora with a random (non-zero) B, so the adapter actually changes the output."""
    ad = init_lora(cfg, jax.random.PRNGKey(seed), **kw)
    keys = jax.random.split(jax.random.PRNGKey(seed + 100), len(ad.b))
    b = {m: 0.5 * jax.random.normal(k, ad.b[m].shape) for m, k in zip(sorted(ad.b), keys)}
    return ad.replace(b=b)


def assert_lora_equal(x: LoraAdapter, y: LoraAdapter) -> None:
    assert (x.layers, x.scale, x.modules) == (y.layers, y.scale, y.modules)
    for m in x.modules:
        np.testing.assert_array_equal(np.asarray(x.a[m]), np.asarray(y.a[m]))
        np.testing.assert_array_equal(np.asarray(x.b[m]), np.asarray(y.b[m]))


def tokens_for(cfg: ModelConfig, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, cfg.vocab_size, (2, 11)).astype(np.int32)


def torch_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()


def emjax_logits(w, cfg: ModelConfig, tokens: np.ndarray, lora: LoraAdapter | None) -> np.ndarray:
    iv = None if lora is None else Interventions(lora=lora)
    return np.asarray(M.forward(w, cfg, jnp.asarray(tokens), interventions=iv))


def rewrite(path: str, edit) -> None:
    """Rewrites a safetensors file through `edit(tensors: dict, metadata: dict)` (in place)."""
    f = SafetensorsFile(path)
    tensors, meta = {n: np.array(f.get(n)) for n in f.names()}, dict(f.metadata)
    del f  # release the memmaps before replacing the file
    edit(tensors, meta)
    write_safetensors(path, tensors, meta)


def edit_config(folder: str, **changes) -> None:
    path = os.path.join(folder, "adapter_config.json")
    with open(path) as fh:
        config = json.load(fh)
    config.update(changes)
    with open(path, "w") as fh:
        json.dump(config, fh)


def weights_path(folder) -> str:
    return os.path.join(folder, "adapter_model.safetensors")


# ---------------------------------------------------------------------------------------------
# Round trips


LORA_CASES = {
    "all_linear_r4_rslora": dict(rank=4, alpha=8.0, rslora=True),
    "all_linear_r4_plain": dict(rank=4, alpha=6.0, rslora=False),
    "down_proj_layer1_r1_rslora": dict(rank=1, alpha=16.0, rslora=True, modules=("down_proj",), layers=(1,)),
    "down_proj_layer1_r1_plain": dict(rank=1, alpha=3.0, rslora=False, modules=("down_proj",), layers=(1,)),
}


@pytest.mark.parametrize("case", list(LORA_CASES))
def test_lora_round_trip(tmp_path, case):
    kw = LORA_CASES[case]
    ad = random_lora(TINY, **kw)
    save_peft_lora(ad, tmp_path, cfg=TINY, rslora=kw["rslora"])
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    # Integral alphas are written as such, so the config reads like a hand-written one.
    assert config["lora_alpha"] == int(kw["alpha"]) and config["use_rslora"] == kw["rslora"]
    assert config["r"] == kw["rank"] and config["target_modules"] == sorted(ad.modules)
    assert config["layers_to_transform"] == (None if "layers" not in kw else list(kw["layers"]))
    assert_lora_equal(load_peft_lora(tmp_path, TINY), ad)


def test_lora_bf16_round_trip(tmp_path):
    ad = random_lora(TINY, rank=2, alpha=4.0, modules=("o_proj",))
    ad = jax.tree.map(lambda x: x.astype(jnp.bfloat16), ad)
    save_peft_lora(ad, tmp_path)
    f = SafetensorsFile(weights_path(tmp_path))
    assert {str(f.get(n).dtype) for n in f.names()} == {"bfloat16"}  # written in the adapter's dtype
    assert_lora_equal(load_peft_lora(tmp_path, TINY, dtype=jnp.bfloat16), ad)


def test_lora_alpha_defaults_and_checks(tmp_path):
    ad = random_lora(TINY, rank=4, alpha=8.0, rslora=False)  # scale 2
    save_peft_lora(ad, tmp_path)  # default: rsLoRA, alpha = scale * sqrt(r); explicit layer list
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["lora_alpha"], config["use_rslora"], config["layers_to_transform"]) == (4, True, [0, 1, 2])
    assert load_peft_lora(tmp_path, TINY).scale == ad.scale
    save_peft_lora(ad, tmp_path, alpha=8)  # rslora inferred from which formula fits
    assert json.loads((tmp_path / "adapter_config.json").read_text())["use_rslora"] is False
    with pytest.raises(AdapterError, match="does not give the adapter's scale"):
        save_peft_lora(ad, tmp_path, alpha=8, rslora=True)
    with pytest.raises(AdapterError, match="model expects"):
        save_peft_lora(ad, tmp_path, cfg=TINY.replace(d_model=32))


def test_steering_round_trip(tmp_path):
    sv = init_steering(TINY, layers=(0, 2), alpha=256.0, hook="block_out")
    sv = sv.replace(vectors=jax.random.normal(jax.random.PRNGKey(0), sv.vectors.shape))
    path = tmp_path / "steer.safetensors"
    save_steering(sv, path, model_name="tiny", extra_metadata={"run": "r1"})
    back = load_steering(path, TINY)
    assert (back.layers, back.alpha, back.hook) == (sv.layers, sv.alpha, sv.hook)
    np.testing.assert_array_equal(np.asarray(back.vectors), np.asarray(sv.vectors))
    meta = SafetensorsFile(path).metadata
    assert (meta["model_name"], meta["run"], json.loads(meta["layers"])) == ("tiny", "r1", [0, 2])


# ---------------------------------------------------------------------------------------------
# Parity with peft


def hf_pair(family: str):
    """A fresh tiny HF model (peft mutates it) and its emjax weights."""
    if family == "qwen2":
        hf = build_hf(qwen2_config(tied=False), seed=5)
    else:
        hf = build_hf(gemma2_config(), seed=6, weight_scale=2.0)
    cfg, w = to_emjax(hf)
    return hf, cfg, w


EXPORT_CASES = {
    "qwen2": dict(rank=4, alpha=8.0, rslora=True),
    "gemma2": dict(rank=2, alpha=3.0, rslora=False, modules=("o_proj", "up_proj", "v_proj"), layers=(1, 2)),
}


@pytest.mark.parametrize("family", list(EXPORT_CASES))
def test_export_loads_in_peft_with_same_logits(tmp_path, family):
    hf, cfg, w = hf_pair(family)
    kw = EXPORT_CASES[family]
    ad = random_lora(cfg, seed=1, **kw)
    save_peft_lora(ad, tmp_path, cfg=cfg, rslora=kw["rslora"], base_model_name_or_path="tiny")
    tokens = tokens_for(cfg)
    base = torch_logits(hf, tokens)
    pm = peft.PeftModel.from_pretrained(hf, str(tmp_path)).eval()
    ref = torch_logits(pm, tokens)
    assert np.abs(ref - base).max() > 1e-2  # the adapter was really applied by peft
    np.testing.assert_allclose(emjax_logits(w, cfg, tokens, ad), ref, atol=TOL, rtol=0)


IMPORT_CASES = {
    "qwen2": dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"],
                  layers_to_transform=[0, 2]),
    "qwen2_int_layer": dict(r=1, lora_alpha=2, use_rslora=True, target_modules=["down_proj"],
                            layers_to_transform=1),
    # peft refuses layers_to_transform with a string target_modules ("all-linear" is one)
    "gemma2": dict(r=2, lora_alpha=3, use_rslora=False, target_modules="all-linear"),
}


@pytest.mark.parametrize("family", list(IMPORT_CASES))
def test_import_peft_adapter_same_logits(tmp_path, family):
    hf, cfg, w = hf_pair(family.split("_")[0])
    pm = peft.get_peft_model(hf, peft.LoraConfig(**IMPORT_CASES[family])).eval()
    with torch.no_grad():  # B is zero at init: randomise it so the adapter matters
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    pm.save_pretrained(str(tmp_path))
    tokens = tokens_for(cfg, 1)
    ref = torch_logits(pm, tokens)
    ad = load_peft_lora(tmp_path, cfg)
    layers = IMPORT_CASES[family].get("layers_to_transform", range(cfg.n_layers))
    assert ad.layers == ((layers,) if isinstance(layers, int) else tuple(layers))
    np.testing.assert_allclose(emjax_logits(w, cfg, tokens, ad), ref, atol=TOL, rtol=0)
    assert np.abs(emjax_logits(w, cfg, tokens, None) - ref).max() > 1e-2


@pytest.mark.parametrize("style", ["default_name", "no_prefix"])
def test_key_variants(tmp_path, style):
    ad = random_lora(TINY, rank=2, alpha=4.0, modules=("k_proj", "gate_proj"), layers=(0, 1))
    save_peft_lora(ad, tmp_path, cfg=TINY)

    def rename(tensors, meta):
        for k in list(tensors):
            new = (k.replace(".weight", ".default.weight") if style == "default_name"
                   else k.removeprefix("base_model.model."))
            tensors[new] = tensors.pop(k)

    rewrite(weights_path(tmp_path), rename)
    assert_lora_equal(load_peft_lora(tmp_path, TINY), ad)


# ---------------------------------------------------------------------------------------------
# LoRA errors


@pytest.fixture
def saved(tmp_path):
    """A saved down_proj + q_proj adapter on layers (0, 2) of TINY."""
    ad = random_lora(TINY, rank=2, alpha=4.0, modules=("down_proj", "q_proj"), layers=(0, 2))
    save_peft_lora(ad, tmp_path, cfg=TINY)
    return tmp_path


@pytest.mark.parametrize("extra", [f"{PREFIX}.0.mlp.up_proj.lora_A.weight",  # untargeted module
                                   f"{PREFIX}.1.mlp.down_proj.lora_A.weight",  # untargeted layer
                                   "base_model.model.lm_head.lora_A.weight"])  # outside the scheme
def test_extra_key_is_named(saved, extra):
    rewrite(weights_path(saved), lambda t, m: t.update({extra: np.zeros((2, 24), np.float32)}))
    with pytest.raises(AdapterError, match="adapter_model.safetensors") as e:
        load_peft_lora(saved, TINY)
    assert extra in str(e.value)


def test_missing_key_is_named(saved):
    gone = f"{PREFIX}.2.self_attn.q_proj.lora_B.weight"
    rewrite(weights_path(saved), lambda t, m: t.pop(gone))
    with pytest.raises(AdapterError, match="expected tensors missing") as e:
        load_peft_lora(saved, TINY)
    assert "model.layers.2.self_attn.q_proj.lora_B.weight" in str(e.value)


def test_wrong_shape_is_named(saved):
    key = f"{PREFIX}.0.mlp.down_proj.lora_A.weight"
    rewrite(weights_path(saved), lambda t, m: t.update({key: np.ascontiguousarray(t[key].T)}))
    with pytest.raises(AdapterError, match=r"has shape \(24, 2\), expected \(2, 24\)") as e:
        load_peft_lora(saved, TINY)
    assert key in str(e.value)


def test_zero_matched_keys(saved):
    def rename(tensors, meta):  # GPT-2 style names: upstream loaders would match nothing, silently
        for i, k in enumerate(sorted(tensors)):
            tensors[f"transformer.h.{i}.attn.c_attn.lora_{'AB'[i % 2]}.weight"] = tensors.pop(k)

    rewrite(weights_path(saved), rename)
    with pytest.raises(AdapterError, match="no tensor key matched") as e:
        load_peft_lora(saved, TINY)
    assert "transformer.h.0.attn.c_attn.lora_A.weight" in str(e.value)


def test_mixed_adapter_names(saved):
    def rename(tensors, meta):
        key = f"{PREFIX}.0.mlp.down_proj.lora_A.weight"
        tensors[key.replace(".weight", ".other.weight")] = tensors.pop(key)

    rewrite(weights_path(saved), rename)
    with pytest.raises(AdapterError, match="mix adapter names"):
        load_peft_lora(saved, TINY)


@pytest.mark.parametrize("option", [dict(use_dora=True), dict(bias="all"), dict(modules_to_save=["lm_head"]),
                                    dict(rank_pattern={"q_proj": 4}), dict(alpha_pattern={"q_proj": 2}),
                                    dict(peft_type="LOHA"), dict(layers_pattern="blocks"),
                                    # these inits rewrite the base weights too (on load as well)
                                    dict(init_lora_weights="pissa"), dict(init_lora_weights="pissa_niter_4"),
                                    dict(init_lora_weights="olora"), dict(init_lora_weights="loftq")])
def test_unsupported_options(saved, option):
    edit_config(saved, **option)
    with pytest.raises(AdapterError, match="adapter_config.json") as e:
        load_peft_lora(saved, TINY)
    assert next(iter(option)) in str(e.value)


@pytest.mark.parametrize("init", [True, False, "gaussian", "eva", "orthogonal"])
def test_inits_that_only_set_a_and_b_load(saved, init):
    edit_config(saved, init_lora_weights=init)
    assert load_peft_lora(saved, TINY).layers


def test_non_product_targets(saved):
    edit_config(saved, target_modules=r"model\.layers\.0\.self_attn\.q_proj|model\.layers\.2\.mlp\.down_proj",
                layers_to_transform=None)
    with pytest.raises(AdapterError, match="layers x modules"):
        load_peft_lora(saved, TINY)


def test_pickle_only_folder_refused(saved):
    os.remove(weights_path(saved))
    (saved / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(AdapterError, match="adapter_model.bin.*never loads pickles"):
        load_peft_lora(saved, TINY)


def test_missing_config(saved):
    os.remove(saved / "adapter_config.json")
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        load_peft_lora(saved, TINY)


# ---------------------------------------------------------------------------------------------
# Steering errors


@pytest.fixture
def steer_file(tmp_path):
    sv = SteeringVectors(vectors=jnp.ones((2, TINY.d_model)), layers=(0, 2), alpha=4.0, hook="mlp_out")
    path = tmp_path / "steer.safetensors"
    save_steering(sv, path)
    return path


@pytest.mark.parametrize("edit,message", [
    (lambda t, m: m.pop("format"), "not an emjax steering file"),
    (lambda t, m: m.pop("hook"), r"lacks \['hook'\]"),
    (lambda t, m: m.update(format_version="2"), "format_version '2' is not supported"),
    (lambda t, m: m.update(hook="attn_out"), "unknown steering hook 'attn_out'"),
    (lambda t, m: m.update(layers="[2, 0]"), "distinct ascending"),
    (lambda t, m: m.update(layers="0,2"), "malformed steering metadata"),
    (lambda t, m: m.update(alpha="nan"), "not finite"),
    (lambda t, m: m.update(d_model="17"), r"shape \(2, 16\), expected \(2, 17\)"),
    (lambda t, m: t.update(extra=np.zeros(3, np.float32)), "exactly one tensor"),
])
def test_steering_metadata_errors(steer_file, edit, message):
    rewrite(str(steer_file), edit)
    with pytest.raises(AdapterError, match=message) as e:
        load_steering(steer_file)
    assert str(steer_file) in str(e.value)


def test_steering_cfg_mismatch(steer_file):
    with pytest.raises(AdapterError, match="d_model=16 but the model has d_model=32"):
        load_steering(steer_file, TINY.replace(d_model=32))
    with pytest.raises(AdapterError, match=r"layers \[2\] out of range for a 2-layer model"):
        load_steering(steer_file, TINY.replace(n_layers=2))


def test_steering_save_rejects_reserved_metadata(tmp_path):
    sv = init_steering(TINY)
    with pytest.raises(AdapterError, match="reserved keys"):
        save_steering(sv, tmp_path / "s.safetensors", extra_metadata={"alpha": "1"})
