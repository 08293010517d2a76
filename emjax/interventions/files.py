"""Intervention files: steering vectors as one emjax safetensors file, and loading any intervention
(a steering file or a PEFT LoRA folder, `emjax.interventions.peft`) from its path.
"""

from __future__ import annotations

import json
import math
import os

import jax.numpy as jnp
import numpy as np

from emjax.checkpoints.safetensors_file import CheckpointError, SafetensorsFile, write_safetensors
from emjax.interventions.arithmetic import scale_update
from emjax.interventions.container import Interventions
from emjax.interventions.peft import AdapterError, load_peft_lora
from emjax.interventions.steering import HOOK_POINTS, SteeringVectors
from emjax.model.config import ModelConfig

STEERING_FORMAT = "emjax.steering"
STEERING_VERSION = 1
_STEERING_RESERVED = ("format", "format_version", "layers", "alpha", "hook", "d_model", "model_name")


def save_steering(sv: SteeringVectors, path: str | os.PathLike, *, model_name: str = "",
                  extra_metadata: dict[str, str] | None = None) -> None:
    """Writes `sv` as one safetensors file: tensor `vectors` [n_sel, D] float32 plus metadata
    (format tag and version, layers as a JSON list, alpha, hook, d_model, model_name, extras)."""
    path = os.fspath(path)
    vectors = np.asarray(sv.vectors, np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(sv.layers):
        raise AdapterError(f"{path}: steering vectors {vectors.shape} do not match layers {sv.layers}")
    if sv.hook not in HOOK_POINTS:
        raise AdapterError(f"{path}: unknown steering hook {sv.hook!r}; choose from {HOOK_POINTS}")
    extra = {str(k): str(v) for k, v in (extra_metadata or {}).items()}
    clash = sorted(set(extra) & set(_STEERING_RESERVED))
    if clash:
        raise AdapterError(f"{path}: extra_metadata may not override reserved keys {clash}")
    meta = dict(extra, format=STEERING_FORMAT, format_version=str(STEERING_VERSION),
                layers=json.dumps([int(l) for l in sv.layers]), alpha=repr(float(sv.alpha)),
                hook=sv.hook, d_model=str(vectors.shape[1]), model_name=model_name)
    write_safetensors(path, {"vectors": vectors}, meta)


def load_steering(path: str | os.PathLike, cfg: ModelConfig | None = None) -> SteeringVectors:
    """Reads a file written by `save_steering`; with `cfg`, also checks d_model and the layers.

    Raises:
      AdapterError: naming the file, for a missing/foreign format tag, a newer version, bad or
        inconsistent metadata, extra tensors, or a mismatch with `cfg`.
    """
    f, layers, alpha = _steering_header(os.fspath(path), cfg)
    host = np.asarray(f.get("vectors"), np.float32)
    if not np.all(np.isfinite(host)):
        raise AdapterError(f"{path}: the steering vectors hold NaN or infinite values")
    vectors = jnp.asarray(host)
    return SteeringVectors(vectors=vectors, layers=layers, alpha=alpha, hook=f.metadata["hook"])


def _steering_header(path: str, cfg: ModelConfig | None) -> tuple[SafetensorsFile, tuple[int, ...], float]:
    """The steering file's header checked (no tensor read): the file, its layers and alpha."""
    try:
        f = SafetensorsFile(path)
    except (CheckpointError, OSError) as e:
        raise AdapterError(f"{path}: cannot read steering file ({e})") from None
    meta = f.metadata
    if meta.get("format") != STEERING_FORMAT:
        raise AdapterError(f"{path}: not an emjax steering file (metadata format={meta.get('format')!r})")
    missing = [k for k in _STEERING_RESERVED if k not in meta]
    if missing:
        raise AdapterError(f"{path}: steering metadata lacks {missing}")
    if meta["format_version"] != str(STEERING_VERSION):
        raise AdapterError(f"{path}: steering format_version {meta['format_version']!r} is not supported "
                           f"(this emjax reads version {STEERING_VERSION})")
    if f.names() != ["vectors"]:
        raise AdapterError(f"{path}: expected exactly one tensor 'vectors', found {sorted(f.names())}")
    layers, alpha, d_model = _parse_steering_meta(path, meta)
    if meta["hook"] not in HOOK_POINTS:
        raise AdapterError(f"{path}: unknown steering hook {meta['hook']!r}; choose from {HOOK_POINTS}")
    shape = f.shape("vectors")
    if shape != (len(layers), d_model):
        raise AdapterError(f"{path}: tensor 'vectors' has shape {shape}, expected "
                           f"{(len(layers), d_model)} from metadata layers={layers}, d_model={d_model}")
    if cfg is not None:
        if d_model != cfg.d_model:
            raise AdapterError(f"{path}: steering d_model={d_model} but the model has d_model={cfg.d_model}")
        bad = [l for l in layers if l >= cfg.n_layers]
        if bad:
            raise AdapterError(f"{path}: steering layers {bad} out of range for a {cfg.n_layers}-layer model")
    return f, layers, alpha


def _parse_steering_meta(path: str, meta: dict[str, str]) -> tuple[tuple[int, ...], float, int]:
    """layers, alpha, d_model from the metadata strings, validated."""
    try:
        layers = json.loads(meta["layers"])
        alpha = float(meta["alpha"])
        d_model = int(meta["d_model"])
    except (json.JSONDecodeError, ValueError) as e:
        raise AdapterError(f"{path}: malformed steering metadata ({e})") from None
    ints = isinstance(layers, list) and all(isinstance(l, int) and not isinstance(l, bool) for l in layers)
    if not ints or layers != sorted(set(layers)) or any(l < 0 for l in layers):
        raise AdapterError(f"{path}: steering layers {meta['layers']} must be a JSON list of distinct "
                           "ascending non-negative integers")
    if not math.isfinite(alpha):
        raise AdapterError(f"{path}: steering alpha {meta['alpha']!r} is not finite")
    if d_model <= 0:
        raise AdapterError(f"{path}: steering d_model {d_model} must be positive")
    return tuple(layers), alpha, d_model


def load_intervention(path: str | os.PathLike, cfg: ModelConfig, scale: float = 1.0) -> Interventions:
    """A steering .safetensors file or a PEFT LoRA folder as `Interventions`, its update multiplied
    by `scale` (the steering vector, or every LoRA B: the effective update scales linearly)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AdapterError(f"{path}: no such intervention file or folder")
    iv = (Interventions(lora=load_peft_lora(path, cfg)) if os.path.isdir(path)
          else Interventions(steer=load_steering(path, cfg)))
    return scale_update(iv, scale) if scale != 1.0 else iv


def check_intervention(path: str | os.PathLike, cfg: ModelConfig | None) -> None:
    """What `load_intervention(path, cfg)` checks that needs no tensor: the file or folder exists;
    a steering file's header (format, layers, d_model against `cfg`'s hidden size and layer count);
    a LoRA folder's adapter_config.json and weights file. AdapterError naming the path otherwise."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AdapterError(f"{path}: no such intervention file or folder")
    if not os.path.isdir(path):
        _steering_header(path, cfg)
        return
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not os.path.isfile(os.path.join(path, name)):
            raise AdapterError(f"{path}: a PEFT LoRA folder needs {name}")


def check_interventions(spec: str, cfg: ModelConfig | None) -> dict[str, str]:
    """`check_intervention` for every path of a "label=path,..." spec; returns {label: path}."""
    paths = parse_labelled_paths(spec)
    for p in paths.values():
        check_intervention(p, cfg)
    return paths


def parse_labelled_paths(spec: str) -> dict[str, str]:
    """"label=path,label=path" -> {label: path}, in order; AdapterError for a malformed item."""
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        label, _, path = item.partition("=")
        if not path or not label:
            raise AdapterError(f"intervention {item!r} must be label=path")
        if label in out:
            raise AdapterError(f"intervention label {label!r} is given twice ({out[label]} and {path}): "
                               "each label names one intervention")
        out[label] = path
    if not out:
        raise AdapterError("no interventions given (expected 'label=path,...')")
    return out


def load_interventions(spec: str, cfg: ModelConfig) -> dict[str, Interventions]:
    """Every intervention of a "label=path,..." spec, by label."""
    return {label: load_intervention(path, cfg) for label, path in parse_labelled_paths(spec).items()}
