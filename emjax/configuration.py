"""Experiment configs: ml-collections config files loaded with ml_collections' own `config_flags`.

A config file is a Python file with `get_config() -> ConfigDict` (see configs/: `default.py` holds
every field of a training run with its meaning; each paper run is a short file of overrides on
top). `load_config(path, overrides)` returns the locked config with `--config.a.b=value` style
overrides applied by `config_flags`: values are parsed to the field's type, and an unknown key or
a value of the wrong type raises `ConfigFileError` naming the file and the key, with the nearest
valid key suggested.

A path may carry an argument for the file's `get_config(arg)`, as ml_collections' config_flags
reads it: `configs/sweep_paper.py:steering,medical` calls `get_config("steering,medical")` (one
file for a family of runs; the file's docstring lists its arguments).

Config files import their base as `from configs import default`: the folder above the config
file's folder is put on `sys.path` while the file loads, so this works from any working directory.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import sys
from typing import Iterator, Sequence

import ml_collections

from emjax.errors import EmjaxError


class ConfigFileError(EmjaxError, ValueError):
    """A config file or override that cannot be applied; the message names the file and key."""


@contextlib.contextmanager
def _importable_config_package(path: str) -> Iterator[None]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    added = root not in sys.path
    if added:
        sys.path.insert(0, root)
    try:
        yield
    finally:
        if added:
            sys.path.remove(root)


def split_config_path(path: str) -> tuple[str, str | None]:
    """"file.py:arg" -> ("file.py", "arg"); "file.py" -> ("file.py", None) (config_flags' syntax:
    everything after the first colon is get_config's argument)."""
    file, sep, arg = path.partition(":")
    return file, (arg if sep else None)


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `path`'s get_config() (or get_config(arg) for "file.py:arg") and applies `key.path=value`
    overrides; the result is locked.

    Raises ConfigFileError for a missing file, a file without get_config(), an argument the file
    does not take or refuses, an unknown key (with the nearest valid key) or a value of the wrong type.
    """
    from absl import flags
    from ml_collections import config_flags

    file, arg = split_config_path(path)
    if not os.path.isfile(file):
        via = f" (from {path!r}: FILE.py:ARG passes ARG to FILE's get_config)" if arg is not None else ""
        raise ConfigFileError(f"config file {file} does not exist{via}")
    argv = ["emjax", f"--config={path}"] + [f"--config.{o}" for o in overrides]
    for o in overrides:
        if "=" not in o:
            raise ConfigFileError(f"{path}: override {o!r} is not of the form key=value")
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", default=None, flag_values=fv, lock_config=True, sys_argv=argv)
    with _importable_config_package(file):
        try:
            fv(argv)
            config = fv.config
        except (flags.Error, KeyError, AttributeError, TypeError, ValueError, IOError) as e:
            raise ConfigFileError(f"{path}: {_describe(e, overrides, path)}") from None
    if config is None or not isinstance(config, ml_collections.ConfigDict):
        raise ConfigFileError(f"{path}: get_config() must return an ml_collections.ConfigDict")
    return config


def _describe(e: Exception, overrides: Sequence[str], path: str) -> str:
    """One line for a config_flags error, naming the key and the nearest valid key."""
    text = str(e.args[0] if isinstance(e, (KeyError, AttributeError)) and e.args else e)
    if "Error whilst parsing config file" in text:  # get_config raised: config_flags wraps the traceback
        return f"get_config{_call(path)} failed: {text.strip().splitlines()[-1]}"
    text = text.replace("\n", " ").strip("'\" ")
    if "get_config" in text or "Failed loading config file" in text:
        return f"cannot load (it must define get_config()): {text}"
    for o in overrides:
        key = o.split("=", 1)[0]
        if f"--config.{key}=" in text or f"--config.{key} " in text:
            return f"bad value for {key!r}: {text.split(': ', 1)[-1]}"
    bad = next((o.split("=", 1)[0] for o in overrides if _missing(o.split("=", 1)[0], path)), None)
    if bad is not None:
        return f"unknown config key {bad!r}{_nearest(bad, path)}"
    return text


def _missing(key: str, path: str) -> bool:
    try:
        config = _plain(path)
    except Exception:  # the file itself is broken: reported by the caller
        return False
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return True
        node = node[part]
    return False


def _call(path: str) -> str:
    arg = split_config_path(path)[1]
    return "()" if arg is None else f"({arg!r})"


def _plain(path: str) -> dict:
    """The config file's get_config() (or get_config(arg)) as nested dicts (no overrides)."""
    import importlib.util
    file, arg = split_config_path(path)
    with _importable_config_package(file):
        spec = importlib.util.spec_from_file_location("emjax_config_probe", file)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return (mod.get_config() if arg is None else mod.get_config(arg)).to_dict()


def flat_keys(d: dict, prefix: str = "") -> list[str]:
    """Every leaf key of a nested dict as a dotted path."""
    out = []
    for k, v in d.items():
        out.extend(flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"])
    return out


def _nearest(key: str, path: str) -> str:
    keys = flat_keys(_plain(path))
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f" (valid keys: {', '.join(keys[:8])}, ...)"


def split_cli_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Splits `--config.x=y` (or `--config.x y`) arguments from the rest of argv; returns
    (the rest, overrides as "x=y")."""
    rest, overrides, it = [], [], iter(argv)
    for a in it:
        if a.startswith("--config."):
            body = a[len("--config."):]
            if "=" not in body:
                try:
                    body = f"{body}={next(it)}"
                except StopIteration:
                    raise ConfigFileError(f"{a} needs a value") from None
            overrides.append(body)
        else:
            rest.append(a)
    return rest, overrides


def config_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), sort_keys=True, default=str)
