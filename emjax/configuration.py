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
file's folder is put on `sys.path` while the file loads, so this works from any working directory,
and for the configs an installed emjax ships (`shipped_config`: the wheel carries configs/ as
`emjax.configs`, whose folder above is the installed `emjax/`, so `configs` is that folder again).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib.util
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

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


def shipped_config_dirs() -> list[Path]:
    """Where the configs shipped with emjax are, first found first: the package `emjax.configs` of an
    installed emjax (setup.py maps the checkout's configs/ to it, in a wheel and in an editable
    install alike), then the configs/ folder of the source checkout this emjax runs from (a checkout
    on PYTHONPATH, or an editable install made before that mapping)."""
    dirs = []
    spec = importlib.util.find_spec("emjax.configs")
    if spec is not None and spec.submodule_search_locations:
        dirs += [Path(p) for p in spec.submodule_search_locations]
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file():  # a source checkout, not site-packages
        dirs.append(checkout / "configs")
    return [d for d in dirs if d.is_dir()]


def shipped_config(name: str) -> str:
    """The path of config `name` ("sweep_default.py", or "paper_14b.py:ARG" with get_config's
    argument kept) among the configs shipped with emjax (`shipped_config_dirs`), for `load_config`:
    what the jobs (`emjax main`, `emjax technical`) run, from any working directory. ConfigFileError
    naming the folders searched when no such file is shipped."""
    file, arg = split_config_path(name)
    dirs = shipped_config_dirs()
    for d in dirs:
        if (d / file).is_file():
            return str(d / file) + (f":{arg}" if arg is not None else "")
    where = ", ".join(map(str, dirs)) or "no configs folder (neither emjax.configs nor a checkout's configs/)"
    raise ConfigFileError(f"emjax ships no config {file} (searched {where}); reinstall emjax "
                          "(pip install .) or run it from its source checkout")


def split_config_path(path: str) -> tuple[str, str | None]:
    """"file.py:arg" -> ("file.py", "arg"); "file.py" -> ("file.py", None) (config_flags' syntax:
    everything after the first colon is get_config's argument)."""
    file, sep, arg = path.partition(":")
    return file, (arg if sep else None)


def load_config(path: str, overrides: Sequence[str] = (), rules: Mapping[str, "Rule"] | None = None
                ) -> ml_collections.ConfigDict:
    """Loads `path`'s get_config() (or get_config(arg) for "file.py:arg") and applies `key.path=value`
    overrides; the result is locked. With `rules` ({dotted key: Rule}), every value is checked
    against its allowed values (`check_values`) before the config is returned.

    Raises ConfigFileError for a missing file, a file that is not Python (naming file and line), a
    file without get_config(), an argument the file does not take or refuses, an unknown key (with
    the nearest valid key), a value of the wrong type, or a value outside its rule.
    """
    from absl import flags
    from ml_collections import config_flags

    file, arg = split_config_path(path)
    if not os.path.isfile(file):
        via = f" (from {path!r}: FILE.py:ARG passes ARG to FILE's get_config)" if arg is not None else ""
        raise ConfigFileError(f"config file {file} does not exist{via}")
    for o in overrides:
        if "=" not in o:
            raise ConfigFileError(f"{path}: override {o!r} is not of the form key=value")
    # key=None sets Python's None (config_flags would parse it as the string 'None', or fail on a
    # number): how a field with an "off" value is turned off, e.g. train.remat=None
    pairs = [o.split("=", 1) for o in overrides]
    unset = [key for key, value in pairs if value == "None"]
    argv = ["emjax", f"--config={path}"] + [f"--config.{o}" for o, (key, _) in zip(overrides, pairs) if key not in unset]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", default=None, flag_values=fv, lock_config=True, sys_argv=argv)
    if not file.endswith(".py"):
        raise ConfigFileError(f"{file}: not a Python config file (a config is a .py file with get_config(); "
                              "see configs/default.py)")
    _check_syntax(file)
    with _importable_config_package(file):
        try:
            fv(argv)
            config = fv.config
        except (flags.Error, KeyError, AttributeError, TypeError, ValueError, IOError) as e:
            raise ConfigFileError(f"{path}: {_describe(e, overrides, path)}") from None
    if config is None or not isinstance(config, ml_collections.ConfigDict):
        raise ConfigFileError(f"{path}: get_config() must return an ml_collections.ConfigDict")
    for key in unset:
        _set_none(config, key, path)
    if rules is not None:
        check_values(config, rules, path)
    return config


def _check_syntax(file: str) -> None:
    """A config file that is not UTF-8 Python: ConfigFileError naming the file and line (config_flags
    would end in a traceback)."""
    try:
        with open(file, "rb") as f:
            source = f.read()
    except OSError as e:
        raise ConfigFileError(f"{file}: cannot read: {e.strerror}") from None
    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError as e:
        line = source[: e.start].count(b"\n") + 1
        raise ConfigFileError(f"{file}:{line}: not UTF-8 text (byte {e.start}); a config is a Python file") from None
    try:
        compile(text, file, "exec", dont_inherit=True)
    except SyntaxError as e:
        raise ConfigFileError(f"{file}:{e.lineno}: not valid Python ({e.msg}); a config is a Python file "
                              "with get_config()") from None
    except ValueError as e:  # null bytes
        raise ConfigFileError(f"{file}: not valid Python ({e})") from None


def _describe(e: Exception, overrides: Sequence[str], path: str) -> str:
    """One line for a config_flags error, naming the key and the nearest valid key."""
    text = str(e.args[0] if isinstance(e, (KeyError, AttributeError)) and e.args else e)
    if "Error whilst parsing config file" in text:  # get_config raised: config_flags wraps the traceback
        return f"get_config{_call(path)} failed: {text.strip().splitlines()[-1]}"
    text = " ".join(text.split())
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # a KeyError's quoted message
        text = text[1:-1]
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


def _set_none(config: ml_collections.ConfigDict, key: str, path: str) -> None:
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ConfigFileError(f"{path}: unknown config key {key!r}{_nearest(key, path)}")
    if isinstance(node[leaf], ml_collections.ConfigDict):
        raise ConfigFileError(f"{path}: bad value for {key!r}: None would replace a whole section")
    node[leaf] = None  # a locked ConfigDict refuses new keys, not new values


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


# ---------------------------------------------------------------------------------------------
# Allowed values of config fields. A stage declares {dotted key: Rule}, its rules derived from the
# code that reads each key (e.g. the remat policies from the decoder's table), and load_config
# checks them at load time: a misspelled choice or an out-of-range number fails in well under a
# second, before any model loads, naming the key, the value, what is allowed and the nearest choice.


class Rule:
    """The allowed values of one config field; `problem(value)` says what is wrong (None: fine)."""

    def problem(self, value: Any) -> str | None:
        raise NotImplementedError


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class OneOf(Rule):
    """One of `choices` (None allowed only when it is one of them)."""

    choices: tuple

    def problem(self, value: Any) -> str | None:
        if value in self.choices and type(value) is not bool:
            return None
        names = [c for c in self.choices if isinstance(c, str)]
        close = difflib.get_close_matches(value, names, n=1, cutoff=0.5) if isinstance(value, str) else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        if None in self.choices and isinstance(value, str) and value.lower() in ("none", "null", "off"):
            hint = "; None is written None (key=None)"
        return f"is not one of {', '.join(map(repr, self.choices))}{hint}"


@dataclasses.dataclass(frozen=True)
class Number(Rule):
    """A finite number (an integer with `integer`) in [low, high]; (low, ...] with low_open; None
    allowed with `optional` (the field's documented "off" or "derived" value)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    integer: bool = False
    optional: bool = False

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.optional else "must be set (it has no 'off' value)"
        if not _is_number(value) or (self.integer and not isinstance(value, int)):
            return f"must be {'an integer' if self.integer else 'a number'}"
        if not math.isfinite(value):
            return "must be a finite number"
        if value < self.low or (self.low_open and value == self.low) or value > self.high:
            return f"must be {self.describe()}"
        return None

    def describe(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


@dataclasses.dataclass(frozen=True)
class Text(Rule):
    """A string, non-empty unless `empty`; None allowed with `optional`."""

    optional: bool = False
    empty: bool = False

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.optional else "must be set"
        if not isinstance(value, str):
            return "must be a string"
        if not value.strip() and not self.empty:
            return "must not be empty"
        return None


@dataclasses.dataclass(frozen=True)
class Each(Rule):
    """A tuple or list whose every item meets `item`; at least `min_len` items (exactly `length`
    where given). A comma-separated string is split into items with `split`."""

    item: Rule
    min_len: int = 1
    length: int | None = None
    split: bool = False

    def problem(self, value: Any) -> str | None:
        if self.split and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (tuple, list)):
            return "must be a tuple of values, e.g. (1.0, 2.0)"
        if self.length is not None and len(value) != self.length:
            return f"must have exactly {self.length} values"
        if len(value) < self.min_len:
            return "must not be empty" if self.min_len == 1 else f"must have at least {self.min_len} values"
        for i, v in enumerate(value):
            p = self.item.problem(v)
            if p is not None:
                return f"item {i} ({v!r}) {p}"
        return None


@dataclasses.dataclass(frozen=True)
class Check(Rule):
    """A rule given as a function: `fn(value)` returns what is wrong, or None."""

    fn: Callable[[Any], str | None]

    def problem(self, value: Any) -> str | None:
        return self.fn(value)


_MISSING = object()


def lookup(config: Any, key: str) -> Any:
    """The value at a dotted key, or `_MISSING` where the config has no such key."""
    node = config
    for part in key.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return _MISSING
    return node


def check_values(config: ml_collections.ConfigDict, rules: Mapping[str, Rule], source: str = "config",
                 error: type[Exception] = ConfigFileError) -> None:
    """Every key of `rules` that the config has, checked; the first bad one raises ConfigFileError:
    "<source>: train.remat='fulll' is not one of None, 'full', 'dots'; did you mean 'full'?".
    Keys a config does not have are skipped (configs of a family share most, not all, keys).
    `error`: the class raised (a stage's own config error, for library callers)."""
    for key, rule in rules.items():
        value = lookup(config, key)
        if value is _MISSING:
            continue
        if isinstance(value, ml_collections.FieldReference):
            value = value.get()
        problem = rule.problem(value)
        if problem is not None:
            raise error(f"{source}: {key}={value!r} {problem}")


def config_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), sort_keys=True, default=str)
