"""Named directions in the residual stream, per layer, from any source, and their files.

A `Direction` is a set of vectors [D] keyed by layer (the residual stream after that block):

  * a steering vector (`steering.safetensors`): alpha·v at each of its layers;
  * a LoRA adapter (PEFT folder): at each layer, the dominant output direction of the update
    summed over the modules that write to the residual stream (`o_proj`, `down_proj`): the first
    left singular vector of scale·(B A) with the modules' inputs side by side (for rank 1 on one
    module, the direction of B). Its sign is arbitrary (A and B can
    both flip), so compare LoRA directions by |cos|;
  * a directions file written by `save_directions` (e.g. a mean-difference, every layer);
  * `random:SEED`: a Gaussian vector per layer (the chance level of |cos| is about sqrt(2/(pi D))).

Specs: "label=SOURCE,label=SOURCE", SOURCE a path, "FILE.safetensors:NAME" for one entry of a
directions file, or "random:SEED".
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from emjax.errors import EmjaxError
from emjax.interventions.files import load_intervention, parse_labelled_paths
from emjax.model.config import ModelConfig

DIRECTIONS_FORMAT = "emjax-directions-v1"
RESIDUAL_WRITERS = ("o_proj", "down_proj")  # LoRA modules whose outputs are added to the residual


class DirectionError(EmjaxError, ValueError):
    """A direction source that cannot be read or used."""


@dataclasses.dataclass
class Direction:
    """vectors: layer -> [D] float32; sign_free: the sign carries no meaning (LoRA)."""

    vectors: dict[int, np.ndarray]
    source: str = ""
    sign_free: bool = False

    def stacked(self, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
        """([L, D] with zero rows where absent, [L] bool present)."""
        out = np.zeros((cfg.n_layers, cfg.d_model), np.float32)
        have = np.zeros(cfg.n_layers, bool)
        for l, v in self.vectors.items():
            out[l], have[l] = v, True
        return out, have


def save_directions(path: str, directions: dict[str, np.ndarray], meta: dict | None = None) -> str:
    """Writes {name: [L, D]} to a safetensors file with provenance `meta` (JSON) in its header."""
    from safetensors.numpy import save_file
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    header = {"format": DIRECTIONS_FORMAT, "meta": json.dumps(meta or {}, sort_keys=True)}
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in directions.items()}, path, metadata=header)
    return path


def load_directions(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """({name: [L, D]}, meta) from a `save_directions` file."""
    from safetensors import safe_open
    if not os.path.isfile(path):
        raise DirectionError(f"{path}: no such directions file")
    try:
        with safe_open(path, framework="numpy") as f:
            header = f.metadata() or {}
            if header.get("format") != DIRECTIONS_FORMAT:
                raise DirectionError(f"{path}: not an emjax directions file (format {header.get('format')!r})")
            arrays = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(header.get("meta", "{}"))
    except DirectionError:
        raise
    except Exception as e:  # safetensors' own errors (a corrupt header, a cut file) and a bad meta
        raise DirectionError(f"{path}: not a readable directions file ({type(e).__name__}: {e})") from None
    bad = [k for k, v in arrays.items() if not np.all(np.isfinite(v))]
    if bad:
        raise DirectionError(f"{path}: direction {bad[0]!r} holds NaN or infinite values")
    return arrays, meta


def _from_file_entry(path: str, name: str, cfg: ModelConfig) -> Direction:
    arrays, _ = load_directions(path)
    if name not in arrays:
        raise DirectionError(f"{path}: no direction {name!r} (has {sorted(arrays)})")
    d = arrays[name]
    if d.shape != (cfg.n_layers, cfg.d_model):
        raise DirectionError(f"{path}:{name}: shape {d.shape}, the model needs [{cfg.n_layers}, {cfg.d_model}]")
    return Direction({l: d[l] for l in range(cfg.n_layers) if np.any(d[l])}, source=f"{path}:{name}")


def _from_intervention(path: str, cfg: ModelConfig) -> Direction:
    iv = load_intervention(path, cfg)
    if iv.steer is not None:
        applied = np.asarray(iv.steer.vectors, np.float32) * iv.steer.alpha
        return Direction({l: applied[i] for i, l in enumerate(iv.steer.layers)}, source=path)
    lora = iv.lora
    mods = [m for m in RESIDUAL_WRITERS if m in lora.modules]
    if not mods:
        raise DirectionError(f"{path}: the adapter has no module writing to the residual stream {RESIDUAL_WRITERS}")
    vectors = {}
    for i, l in enumerate(lora.layers):
        # [D, in_o + in_down]: what the modules add to the residual, side by side over their inputs
        update = np.concatenate([np.asarray(lora.b[m][i], np.float64).T @ np.asarray(lora.a[m][i], np.float64).T
                                 for m in mods], axis=1) * lora.scale
        u, s, _ = np.linalg.svd(update, full_matrices=False)
        vectors[l] = (u[:, 0] * s[0]).astype(np.float32)
    return Direction(vectors, source=path, sign_free=True)


def _random(seed: int, cfg: ModelConfig) -> Direction:
    rng = np.random.default_rng(seed)
    return Direction({l: rng.standard_normal(cfg.d_model).astype(np.float32) for l in range(cfg.n_layers)},
                     source=f"random:{seed}")


def load_direction(source: str, cfg: ModelConfig) -> Direction:
    """One source (see the module docstring)."""
    if source.startswith("random:"):
        try:
            return _random(int(source.split(":", 1)[1]), cfg)
        except ValueError:
            raise DirectionError(f"{source!r}: expected random:SEED with an integer seed") from None
    path, sep, name = source.rpartition(":")
    if sep and path.endswith(".safetensors") and name and not os.path.exists(source):
        return _from_file_entry(path, name, cfg)
    if source.endswith(".safetensors") and os.path.isfile(source):
        try:
            arrays, _ = load_directions(source)
        except DirectionError:
            return _from_intervention(source, cfg)  # a steering vector file
        if len(arrays) != 1:
            raise DirectionError(f"{source}: holds {sorted(arrays)}; name one as {source}:NAME")
        return _from_file_entry(source, next(iter(arrays)), cfg)
    if not os.path.exists(source):
        raise DirectionError(f"{source}: no such directions file, steering file or LoRA folder")
    return _from_intervention(source, cfg)


def load_direction_set(spec: str, cfg: ModelConfig) -> dict[str, Direction]:
    """Every source of a "label=SOURCE,..." spec, by label."""
    try:
        items = parse_labelled_paths(spec)
    except EmjaxError as e:
        raise DirectionError(str(e)) from None
    return {label: load_direction(src, cfg) for label, src in items.items()}


def parse_layers(text: str, cfg: ModelConfig) -> tuple[int, ...]:
    """"all", "12", "3,5,7" or "10-14" (inclusive) -> layer indices."""
    if text == "all":
        return tuple(range(cfg.n_layers))
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition("-")
        try:
            out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
        except ValueError:
            raise DirectionError(f"layers {text!r}: expected 'all', 'L', 'L1,L2' or 'L1-L2'") from None
    bad = [l for l in out if not 0 <= l < cfg.n_layers]
    if bad:
        raise DirectionError(f"layers {bad} out of range [0, {cfg.n_layers})")
    return tuple(sorted(set(out)))


def ablation_from_spec(spec: str, cfg: ModelConfig):
    """"SOURCE[@LAYERS]" -> `emjax.model.ablation.DirectionAblation` (LAYERS default "all").

    A direction given at one layer only (a steering vector) is ablated at every listed layer
    (upstream's variant of one layer's direction used at every layer); a per-layer direction
    (a mean-difference) must have a vector at each listed layer."""
    from emjax.model.ablation import direction_ablation

    source, _, layers_text = spec.partition("@")
    d = load_direction(source, cfg)
    layers = parse_layers(layers_text or "all", cfg)
    if len(d.vectors) == 1:
        (v,) = d.vectors.values()
        return direction_ablation(cfg, v, layers)
    missing = [l for l in layers if l not in d.vectors]
    if missing:
        raise DirectionError(f"ablation {spec!r}: {source} has no vector at layers {missing}")
    return direction_ablation(cfg, np.stack([d.vectors[l] for l in layers]), layers)
