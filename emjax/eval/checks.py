"""Checks a stage runs before it spends anything (a paid request, a model load).

    check_output_file("judgements.jsonl", inputs={"--answers": ["answers.jsonl"]})
    check_metrics(["aligned", "coherrent"], available={"aligned", "coherent"})   # did you mean
    check_include_globs(["quick_bcuk"], questions)

Each raises an `EmjaxError` subclass whose one-line message names the option, the file or the
value, and says what to do. Nothing here creates a file that stays: the writability probe is a
temporary file removed at once. This module must not import jax (the judge stage runs without
accelerators).
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import tempfile
from collections.abc import Collection, Iterable, Mapping, Sequence

from emjax.errors import EmjaxError


class OutputPathError(EmjaxError, ValueError):
    """An output path that cannot be written, or that is one of the stage's inputs."""


class MetricNameError(EmjaxError, ValueError):
    """A judge metric that no judge template provides."""


class SelectionError(EmjaxError, ValueError):
    """A question id glob that matches no question."""


def _same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def check_not_an_input(out: str, inputs: Mapping[str, Iterable[str]], option: str = "--out") -> None:
    """Refuse an output that is one of the inputs ({option: paths}): appending to it would
    corrupt that input."""
    for name, paths in inputs.items():
        for p in paths:
            if p and _same_file(out, p):
                raise OutputPathError(f"{option} {out} is also {name} {p}: results would be appended to an "
                                      f"input; give {option} a new file")


def check_writable_folder(folder: str, what: str) -> None:
    """`folder` exists, is a folder, and a file can be created in it (probed; removed at once)."""
    folder = folder or "."
    if not os.path.exists(folder):
        raise OutputPathError(f"{what}: folder {folder} does not exist; create it first")
    if not os.path.isdir(folder):
        raise OutputPathError(f"{what}: {folder} is not a folder")
    try:  # os.access says yes to root on a read-only mount; a real probe does not
        fd, probe = tempfile.mkstemp(prefix=".emjax-write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputPathError(f"{what}: cannot write in {folder} ({e.strerror or e}); choose a writable "
                              "folder") from None


def check_output_file(out: str, inputs: Mapping[str, Iterable[str]] | None = None,
                      option: str = "--out") -> None:
    """An output file emjax appends to: not an input, its folder writable, itself (if present) a
    writable regular file."""
    check_not_an_input(out, inputs or {}, option)
    if os.path.isdir(out):
        raise OutputPathError(f"{option} {out} is a folder; give a file path")
    check_writable_folder(os.path.dirname(out), f"{option} {out}")
    if os.path.exists(out):
        if not os.path.isfile(out):
            raise OutputPathError(f"{option} {out} is not a regular file")
        try:
            with open(out, "ab"):
                pass
        except OSError as e:
            raise OutputPathError(f"{option} {out} cannot be appended to ({e.strerror or e})") from None


def check_output_folder(out_dir: str, option: str = "--out-dir") -> None:
    """A folder a stage writes files into (created if missing): its nearest existing ancestor must
    be a writable folder."""
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise OutputPathError(f"{option} {out_dir} exists and is not a folder")
        check_writable_folder(out_dir, f"{option} {out_dir}")
        return
    parent = os.path.dirname(os.path.abspath(out_dir))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    check_writable_folder(parent, f"{option} {out_dir}")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_metrics(metrics: Sequence[str], available: Collection[str], where: str = "",
                  option: str = "--metrics") -> None:
    """Every metric has a judge template somewhere (a question's or a --judge-prompts file's)."""
    if not metrics:
        raise MetricNameError("no judge metric given (--metrics): name at least one, e.g. aligned,coherent")
    for m in metrics:
        if m not in available:
            have = ", ".join(sorted(available)) or "none"
            raise MetricNameError(f"{option}: no judge template for metric {m!r}{did_you_mean(m, available)} "
                                  f"(templates{' in ' + where if where else ''}: {have})")


def check_include_globs(include: Sequence[str] | None, ids: Sequence[str], where: str = "") -> None:
    """Every --include glob matches some question id (a glob matching none is a typo)."""
    if not include:
        return
    dead = [g for g in include if not any(fnmatch.fnmatchcase(q, g) for q in ids)]
    if dead:
        hint = "".join(did_you_mean(g, ids) for g in dead[:1])
        some = ", ".join(list(ids)[:5]) + (" ..." if len(ids) > 5 else "")
        raise SelectionError(f"--include {', '.join(dead)} matches no question{' in ' + where if where else ''}"
                             f"{hint} (ids: {some or 'none'})")


def check_kinds(kinds: Sequence[str], kinds_known: Sequence[str] = ("free_form", "json", "template")) -> None:
    """Question kinds are among the known ones (emjax.eval.questions.KINDS)."""
    bad = [k for k in kinds if k not in kinds_known]
    if bad or not kinds:
        hint = did_you_mean(bad[0], kinds_known) if bad else ""
        raise SelectionError(f"--kinds {','.join(kinds)}: unknown kind(s) {bad}{hint}; choose from "
                             f"{','.join(kinds_known)} (or 'all')")
