"""LoRA adapters as Hugging Face PEFT folders (`adapter_config.json` + `adapter_model.safetensors`):
an adapter trained in emjax loads with `peft.PeftModel.from_pretrained` (and in vLLM), and an
adapter trained with PEFT loads into emjax.

Strictness: PEFT and upstream loaders match tensor names by pattern and silently skip what does not
match, so a renamed key yields an adapter that does nothing. `load_peft_lora` instead requires every
tensor in the file to map to one expected (layer, module, A/B) slot and every slot to be filled;
anything else raises `AdapterError` naming the file and the keys.

How `scale` round-trips through PEFT's config. `LoraAdapter` stores only the product
`scale = alpha / sqrt(r)` (rsLoRA) or `alpha / r` (plain), because that is all the forward pass
needs. PEFT's config stores `lora_alpha` and `use_rslora` instead, so `save_peft_lora` picks a pair
that reproduces `scale` exactly:

  * `rslora` defaults to True (emjax's `init_lora` default and the paper's setting) and then
    `lora_alpha = scale * sqrt(r)`; with `rslora=False`, `lora_alpha = scale * r`;
  * a derived alpha within 1e-9 (relative) of an integer is written as that integer, so an
    adapter made with `init_lora(alpha=64, rank=32)` writes `"lora_alpha": 64` and loads back to
    a bit-identical `scale`;
  * passing `alpha` (and optionally `rslora`) writes exactly those, after checking that they give
    `scale` (rel. 1e-6): pass them when the numbers in the config matter to a reader.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Iterable

import jax.numpy as jnp
import numpy as np

from emjax.checkpoints.safetensors_file import CheckpointError, SafetensorsFile, write_safetensors
from emjax.errors import EmjaxError
from emjax.interventions.lora import LoraAdapter
from emjax.model.config import ModelConfig
from emjax.model.schema import PROJECTIONS, hf_module_path, layer_shapes

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_NAMES = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")

# The block sub-module holding each projection in the HF module tree ("self_attn", "mlp").
PARENT = {m: hf_module_path(m).rsplit(".", 1)[0] for m in PROJECTIONS}

# PEFT tensor keys: optional `base_model.model.` prefix, optional adapter name before `.weight`.
_KEY = re.compile(r"^(?P<prefix>base_model\.model\.)?model\.layers\.(?P<layer>\d+)\."
                  r"(?P<parent>self_attn|mlp)\.(?P<module>[a-z_]+)\.lora_(?P<ab>[AB])"
                  r"(?:\.(?P<name>[A-Za-z0-9_\-]+))?\.weight$")
_KEY_SCHEME = "[base_model.model.]model.layers.{i}.{self_attn|mlp}.{proj}.lora_{A|B}[.{adapter}].weight"

# init_lora_weights values that only set A and B (peft 0.22's LoraConfig). The others (pissa*,
# olora, corda, loftq, lora_ga, astra) also rewrite the base weights to W - scale * B0 @ A0, again
# when PEFT loads the adapter, so their A and B apply to that residual base, not to W.
_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal", "mica", "nora")

# PEFT options that change the forward pass in ways LoraAdapter cannot express: option -> test
# that the value is harmless. Initialisation-only settings (the loftq/eva/corda/lora_ga configs
# beside a plain init_lora_weights) and lora_dropout (identity at inference) are ignored on purpose.
_UNSUPPORTED: dict[str, Any] = {
    "init_lora_weights": lambda v: any(v is p if isinstance(p, bool) else v == p for p in _PLAIN_INITS),
    "use_dora": lambda v: not v,
    "bias": lambda v: v in (None, "none"),
    "lora_bias": lambda v: not v,
    "modules_to_save": lambda v: not v,
    "rank_pattern": lambda v: not v,
    "alpha_pattern": lambda v: not v,
    "fan_in_fan_out": lambda v: not v,
    "layer_replication": lambda v: not v,
    "use_qalora": lambda v: not v,
    "alora_invocation_tokens": lambda v: not v,
    "trainable_token_indices": lambda v: not v,
    "target_parameters": lambda v: not v,
    "megatron_config": lambda v: not v,
    "use_bdlora": lambda v: not v,
    "arrow_config": lambda v: not v,
    "kasa_config": lambda v: not v,
    "monteclora_config": lambda v: not v,
    "velora_config": lambda v: not v,
}


class AdapterError(EmjaxError, ValueError):
    """An adapter or steering file that cannot be saved or loaded as asked; the message names it."""


# ---------------------------------------------------------------------------------------------
# LoRA: save


def save_peft_lora(adapter: LoraAdapter, folder: str | os.PathLike, *, base_model_name_or_path: str = "",
                   alpha: float | None = None, rslora: bool | None = None,
                   cfg: ModelConfig | None = None) -> None:
    """Writes `adapter` as a Hugging Face PEFT LoRA adapter folder.

    Args:
      adapter: the adapter; its arrays are written in their own dtype, transposed to PyTorch's
        `lora_A: [r, in]`, `lora_B: [out, r]`.
      folder: created if needed; `adapter_config.json` and `adapter_model.safetensors` are replaced.
      base_model_name_or_path: recorded in the config (PEFT uses it only when no model is given).
      alpha, rslora: the (lora_alpha, use_rslora) pair to record; see the module docstring.
      cfg: optional model config: checks shapes and layer range, and writes
        `layers_to_transform: null` when the adapter targets every layer (else an explicit list).

    Raises:
      AdapterError: empty adapter, unknown modules, inconsistent shapes or alpha/rslora, or
        shapes that do not fit `cfg`.
    """
    folder = os.fspath(folder)
    rank = _check_saveable(adapter, cfg, folder)
    lora_alpha, use_rslora = _alpha_for_scale(adapter.scale, rank, alpha, rslora, folder)
    all_layers = cfg is not None and adapter.layers == tuple(range(cfg.n_layers))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path or None,
        "r": rank,
        "lora_alpha": lora_alpha,
        "use_rslora": use_rslora,
        "target_modules": sorted(adapter.modules),
        "layers_to_transform": None if all_layers else list(adapter.layers),
        # PEFT's default layer matcher would work too; naming it makes the intent explicit.
        "layers_pattern": None if all_layers else "layers",
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": False,
        "lora_bias": False,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "init_lora_weights": True,
        "inference_mode": True,
    }
    tensors = {}
    for m in adapter.modules:
        a, b = np.asarray(adapter.a[m]), np.asarray(adapter.b[m])
        for i, layer in enumerate(adapter.layers):
            base = f"base_model.model.model.layers.{layer}.{PARENT[m]}.{m}"
            tensors[f"{base}.lora_A.weight"] = np.ascontiguousarray(a[i].T)
            tensors[f"{base}.lora_B.weight"] = np.ascontiguousarray(b[i].T)
    os.makedirs(folder, exist_ok=True)
    write_safetensors(os.path.join(folder, WEIGHTS_NAME), tensors, {"format": "pt"})
    _write_json(os.path.join(folder, CONFIG_NAME), config)


def _check_saveable(adapter: LoraAdapter, cfg: ModelConfig | None, where: str) -> int:
    """Validates structure (and shapes against `cfg`); returns the rank."""
    if not adapter.a or not adapter.layers:
        raise AdapterError(f"{where}: refusing to save an empty LoRA adapter (no modules or no layers)")
    if set(adapter.a) != set(adapter.b):
        raise AdapterError(f"{where}: LoRA A and B target different modules: "
                           f"{sorted(adapter.a)} vs {sorted(adapter.b)}")
    unknown = sorted(set(adapter.a) - set(PROJECTIONS))
    if unknown:
        raise AdapterError(f"{where}: unknown LoRA modules {unknown}; PEFT export supports {PROJECTIONS}")
    if list(adapter.layers) != sorted(set(adapter.layers)) or min(adapter.layers) < 0:
        raise AdapterError(f"{where}: LoRA layers {adapter.layers} must be distinct, ascending and >= 0")
    if cfg is not None and max(adapter.layers) >= cfg.n_layers:
        raise AdapterError(f"{where}: LoRA layers {adapter.layers} out of range for a "
                           f"{cfg.n_layers}-layer model")
    rank, n = adapter.rank, len(adapter.layers)
    shapes = layer_shapes(cfg) if cfg is not None else None
    for m in adapter.modules:
        a, b = adapter.a[m].shape, adapter.b[m].shape
        ok = len(a) == 3 and len(b) == 3 and a[0] == b[0] == n and a[2] == b[1] == rank
        if shapes is not None:
            ok = ok and (a[1], b[2]) == shapes[m]
        if not ok:
            want = f"; model expects in, out = {shapes[m]}" if shapes is not None else ""
            raise AdapterError(f"{where}: LoRA module {m}: A {a} / B {b} do not fit "
                               f"[n_layers={n}, in, r={rank}] / [n_layers, r, out]{want}")
    return rank


def _alpha_for_scale(scale: float, rank: int, alpha: float | None, rslora: bool | None,
                     where: str) -> tuple[float | int, bool]:
    """The (lora_alpha, use_rslora) pair to write for `scale` (see the module docstring)."""
    denom = {True: math.sqrt(rank), False: float(rank)}
    if alpha is None:
        use = True if rslora is None else bool(rslora)
        return _snap(scale * denom[use]), use
    candidates = [True, False] if rslora is None else [bool(rslora)]
    for use in candidates:  # rsLoRA first: for r = 1 both agree and rsLoRA is the default
        if math.isclose(alpha / denom[use], scale, rel_tol=1e-6):
            return _snap(alpha), use
    raise AdapterError(f"{where}: lora_alpha={alpha} with use_rslora={rslora} and r={rank} does not give "
                       f"the adapter's scale {scale} (alpha/sqrt(r)={alpha / denom[True]}, "
                       f"alpha/r={alpha / denom[False]})")


def _snap(x: float) -> float | int:
    """`x` as an int when it is one up to float round-off (keeps configs readable and exact)."""
    r = round(x)
    return int(r) if r != 0 and math.isclose(x, r, rel_tol=1e-9) else float(x)


def _write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# LoRA: load


def load_peft_lora(folder: str | os.PathLike, cfg: ModelConfig, *, dtype=jnp.float32) -> LoraAdapter:
    """Reads a PEFT LoRA adapter folder for a model described by `cfg` (any family of the registry).

    Supports rsLoRA and plain scaling, `target_modules` as a list of names, "all-linear" or a
    regex (PEFT's matching rules), `layers_to_transform` as an int or a list, `exclude_modules`,
    and tensor keys with or without the `base_model.model.` prefix and with an optional adapter
    name (`lora_A.default.weight`). The targeted (layer, module) set must be a full product
    layers x modules, as `LoraAdapter` holds one layer list for all modules.

    Raises:
      AdapterError: missing files, pickled weights, unsupported options, and any tensor key that
        is not consumed or any expected tensor that is absent (all named, with the file).
    """
    folder = os.fspath(folder)
    config_path, weights_path = os.path.join(folder, CONFIG_NAME), os.path.join(folder, WEIGHTS_NAME)
    config = _read_config(config_path, weights_path, folder)
    rank, scale = _rank_and_scale(config, config_path)
    layers, modules = _targets(config, cfg, config_path)
    expected = {(l, m, ab) for l in layers for m in modules for ab in "AB"}
    found = _match_keys(weights_path, _read_tensors(weights_path), expected)

    shapes = layer_shapes(cfg)
    a, b = {}, {}
    for m in modules:
        d_in, d_out = shapes[m]
        a_rows, b_rows = [], []
        for l in layers:
            key_a, arr_a = found[(l, m, "A")]
            key_b, arr_b = found[(l, m, "B")]
            _check_shape(weights_path, key_a, arr_a, (rank, d_in))
            _check_shape(weights_path, key_b, arr_b, (d_out, rank))
            a_rows.append(np.asarray(arr_a, np.float32).T)
            b_rows.append(np.asarray(arr_b, np.float32).T)
        a[m] = jnp.asarray(np.stack(a_rows), dtype)
        b[m] = jnp.asarray(np.stack(b_rows), dtype)
    return LoraAdapter(a=a, b=b, layers=layers, scale=scale)


def _read_config(config_path: str, weights_path: str, folder: str) -> dict:
    """The parsed adapter config, after checking both files exist and the weights are not pickled."""
    if not os.path.isdir(folder):
        raise AdapterError(f"{folder}: not an adapter folder (does not exist or is not a directory)")
    if not os.path.exists(weights_path):
        pickled = [n for n in PICKLE_NAMES if os.path.exists(os.path.join(folder, n))]
        if pickled:
            raise AdapterError(
                f"{folder}: only pickled adapter weights found ({', '.join(pickled)}); emjax never loads "
                "pickles. Convert once with peft: PeftModel.from_pretrained(base, folder)"
                ".save_pretrained(out, safe_serialization=True)")
        raise AdapterError(f"{folder}: no {WEIGHTS_NAME}")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise AdapterError(f"{folder}: no {CONFIG_NAME}") from None
    except json.JSONDecodeError as e:
        raise AdapterError(f"{config_path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{config_path}: expected a JSON object")
    if config.get("peft_type") != "LORA":
        raise AdapterError(f"{config_path}: peft_type={config.get('peft_type')!r}; only 'LORA' is supported")
    bad = {k: config[k] for k, ok in _UNSUPPORTED.items() if k in config and not ok(config[k])}
    if "init_lora_weights" in bad:
        raise AdapterError(f"{config_path}: init_lora_weights={bad['init_lora_weights']!r} makes PEFT rewrite the base "
                           "weights as well, so this adapter applies to a modified base model that emjax does not "
                           "have; save it from PEFT as a plain LoRA with save_pretrained(..., "
                           "path_initial_model_for_weight_conversion=...) and load that")
    if bad:
        raise AdapterError(f"{config_path}: unsupported LoRA options {bad}; emjax applies only plain "
                           "LoRA (optionally rsLoRA) without bias, DoRA or per-module patterns")
    return config


def _rank_and_scale(config: dict, where: str) -> tuple[int, float]:
    """r and the LoRA multiplier alpha / sqrt(r) (rsLoRA) or alpha / r."""
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise AdapterError(f"{where}: 'r' must be a positive integer, got {r!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise AdapterError(f"{where}: 'lora_alpha' must be a finite number, got {alpha!r}")
    rslora = config.get("use_rslora", False)
    return r, float(alpha / math.sqrt(r) if rslora else alpha / r)


def _targets(config: dict, cfg: ModelConfig, where: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The targeted layers and modules, by PEFT's own matching rules applied to the HF names."""
    targets = config.get("target_modules")
    if targets is None or targets == []:
        raise AdapterError(f"{where}: 'target_modules' is empty")
    if targets == "all-linear":  # PEFT expands it to every linear layer except the output head
        targets = list(PROJECTIONS)
    pattern = config.get("layers_pattern")
    if pattern not in (None, "", "layers", ["layers"], []):
        raise AdapterError(f"{where}: layers_pattern={pattern!r} does not match the HF module tree "
                           "(model.layers.{i}); only 'layers' or null are supported")
    hits = {(l, m) for l in range(cfg.n_layers) for m in PROJECTIONS
            if _peft_targets(config, targets, f"model.layers.{l}.{PARENT[m]}.{m}", l)}
    if not hits:
        raise AdapterError(f"{where}: target_modules={targets!r} with layers_to_transform="
                           f"{config.get('layers_to_transform')!r} selects none of {PROJECTIONS} in "
                           f"a {cfg.n_layers}-layer model")
    layers = tuple(sorted({l for l, _ in hits}))
    modules = tuple(sorted({m for _, m in hits}))
    missing = sorted({(l, m) for l in layers for m in modules} - hits)
    if missing:
        raise AdapterError(f"{where}: the adapter targets different layers for different modules "
                           f"(e.g. not {missing[:4]}); emjax's LoraAdapter needs layers x modules")
    return layers, modules


def _peft_targets(config: dict, targets: str | list[str], name: str, layer: int) -> bool:
    """Whether PEFT would wrap module `name` (mirrors peft's `check_target_module_exists`)."""
    exclude = config.get("exclude_modules")
    if exclude:
        if isinstance(exclude, str):
            if re.fullmatch(exclude, name):
                return False
        elif name in exclude or any(name.endswith(f".{e}") for e in exclude):
            return False
    if isinstance(targets, str):  # a regex: PEFT ignores layers_to_transform in this case
        return re.fullmatch(targets, name) is not None
    if name not in targets and not any(name.endswith(f".{t}") for t in targets):
        return False
    wanted = config.get("layers_to_transform")
    if wanted is None or wanted == []:
        return True
    return layer == wanted if isinstance(wanted, int) else layer in wanted


def _read_tensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of the file by key (memory-mapped; parsed by `_match_keys`)."""
    try:
        f = SafetensorsFile(path)
    except CheckpointError as e:
        raise AdapterError(str(e)) from None
    out = {n: f.get(n) for n in f.names()}
    bad = [n for n, x in out.items() if jnp.issubdtype(x.dtype, jnp.floating) and not np.all(np.isfinite(x))]
    if bad:
        raise AdapterError(f"{path}: tensor {bad[0]!r} holds NaN or infinite values")
    return out


def _match_keys(path: str, raw: dict[str, np.ndarray], expected: set[tuple[int, str, str]]
                ) -> dict[tuple[int, str, str], tuple[str, np.ndarray]]:
    """Maps `raw` (key -> array) onto the `expected` (layer, module, "A"|"B") slots.

    Returns slot -> (key, array); raises unless keys and slots correspond one to one.
    """
    slots: dict[tuple[int, str, str], tuple[str, np.ndarray]] = {}
    unmatched, unexpected, duplicate, names = [], [], [], set()
    for key, arr in raw.items():
        m = _KEY.match(key)
        if m is None or m["module"] not in PARENT or PARENT[m["module"]] != m["parent"]:
            unmatched.append(key)
            continue
        slot = (int(m["layer"]), m["module"], m["ab"])
        names.add(m["name"])
        if slot not in expected:
            unexpected.append(key)
        elif slot in slots:
            duplicate.append(f"{key} (same slot as {slots[slot][0]})")
        else:
            slots[slot] = (key, arr)
    if not slots:
        raise AdapterError(f"{path}: no tensor key matched the expected scheme {_KEY_SCHEME} for the "
                           f"configured targets; the file has {len(raw)} keys, e.g. {_few(sorted(raw))}")
    problems = []
    if unmatched:
        problems.append(f"{len(unmatched)} keys not in the PEFT LoRA scheme {_KEY_SCHEME}: {_few(unmatched)}")
    if unexpected:
        problems.append(f"{len(unexpected)} keys for layers/modules the config does not target: "
                        f"{_few(unexpected)}")
    if duplicate:
        problems.append(f"{len(duplicate)} duplicate keys: {_few(duplicate)}")
    if len(names) > 1:
        problems.append(f"keys mix adapter names {sorted(names, key=str)}")
    missing = sorted(expected - set(slots))
    if missing:
        keys = [f"model.layers.{l}.{PARENT[m]}.{m}.lora_{ab}.weight" for l, m, ab in missing]
        problems.append(f"{len(missing)} expected tensors missing: {_few(keys)}")
    if problems:
        raise AdapterError(f"{path}: " + "; ".join(problems))
    return slots


def _check_shape(path: str, key: str, arr: np.ndarray, want: tuple[int, ...]) -> None:
    if tuple(arr.shape) != want:
        raise AdapterError(f"{path}: tensor {key!r} has shape {tuple(arr.shape)}, expected {want}")


def _few(items: Iterable[str], n: int = 6) -> str:
    items = list(items)
    more = f" ... (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
