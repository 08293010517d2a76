"""ml-collections experiment configs with `--config.a.b=value` command-line overrides.

A config file is a Python file with `get_config() -> ConfigDict` (see configs/). The returned
dict is locked, so an override of an unknown key fails, naming the key and the file, and
ConfigDict's type checks reject a value of the wrong type.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from typing import Sequence

import ml_collections


class ConfigOverrideError(ValueError):
    """A config file or override that cannot be applied; the message names the key and file."""


def load_config_file(path: str) -> ml_collections.ConfigDict:
    if not os.path.exists(path):
        raise ConfigOverrideError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"emjax_config_{abs(hash(path))}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "get_config"):
        raise ConfigOverrideError(f"{path}: defines no get_config()")
    return mod.get_config()


def _parse_value(text: str, current):
    if isinstance(current, bool) or current is None and text.lower() in ("true", "false"):
        low = text.lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(current, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(current, (list, tuple)) and not isinstance(value, (list, tuple)):
        value = (value,) if isinstance(current, tuple) else [value]
    return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str], source: str = "config"):
    """Applies `key.path=value` strings (without the leading `--config.`) to a locked config."""
    config.lock()
    for item in overrides:
        if "=" not in item:
            raise ConfigOverrideError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        parts = key.split(".")
        node = config
        for i, p in enumerate(parts[:-1]):
            if not isinstance(node, ml_collections.ConfigDict) or p not in node:
                raise ConfigOverrideError(f"unknown config key {'.'.join(parts[: i + 1])!r} (in {source})")
            node = node[p]
        leaf = parts[-1]
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise ConfigOverrideError(f"unknown config key {key!r} (in {source})")
        try:
            node[leaf] = _parse_value(text, node[leaf])
        except (TypeError, ValueError) as e:
            raise ConfigOverrideError(f"bad value for {key!r} (in {source}): {e}") from None
    return config


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `path`'s get_config() and applies overrides; the result is locked."""
    return apply_overrides(load_config_file(path), overrides, source=path)


def split_cli_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Splits `--config.x=y` (or `--config.x y`) arguments from the rest of argv."""
    rest, overrides, it = [], [], iter(argv)
    for a in it:
        if a.startswith("--config."):
            body = a[len("--config."):]
            if "=" not in body:
                try:
                    body = f"{body}={next(it)}"
                except StopIteration:
                    raise ConfigOverrideError(f"{a} needs a value") from None
            overrides.append(body)
        else:
            rest.append(a)
    return rest, overrides


def config_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), sort_keys=True, default=str)
