"""The package layering holds: every `emjax` import (module level or inside a function) points to a
package the importing package may use, so imports point one way (see emjax/__init__.py)."""

import ast
from pathlib import Path

import pytest

import paths

PACKAGE = paths.REPO / "emjax"

# package -> the emjax packages it may import (besides itself). Lower layers first.
ALLOWED = {
    "errors": set(),
    "timings": set(),  # the stages' stopwatch (jax.monitoring only)
    "arg_types": set(),  # bounded argparse types
    "data": {"errors"},
    "model": {"errors"},
    "configuration": {"errors"},
    "checkpoints": {"timings", "errors", "model", "data"},
    "interventions": {"errors", "model", "checkpoints"},
    "train": {"timings", "errors", "model", "data", "checkpoints", "interventions", "configuration"},
    "eval": {"arg_types", "timings", "errors", "model", "data", "checkpoints", "interventions"},
    "directions": {"arg_types", "errors", "model", "data", "checkpoints", "interventions", "train", "eval"},
    "metrics": {"timings", "errors", "model", "data", "checkpoints", "interventions", "train", "configuration", "directions"},
    # whole-pipeline jobs (main, technical, main_summary): every stage package below them
    "jobs": {"timings", "errors", "model", "data", "checkpoints", "interventions", "train", "metrics", "eval",
             "configuration"},
    "experiments": {"errors", "model", "data", "checkpoints", "interventions", "train", "eval", "configuration",
                    "directions", "jobs"},
    "launch": {"arg_types", "errors", "model", "configuration", "interventions", "train"},
    "cli": {"arg_types", "timings", "errors", "model", "data", "checkpoints", "train", "metrics", "eval", "configuration", "jobs",
            "directions", "launch", "experiments"},
    "__main__": {"cli"},
    "__init__": set(),
}
# Modules of the judge stage, which runs on machines without accelerators: no JAX, so none of the
# JAX packages and no other eval module that imports JAX.
ACCELERATOR_FREE = ("eval/questions.py", "eval/records.py", "eval/checks.py", "eval/output_lock.py", "eval/rescue.py", "eval/report.py", "eval/report_plots.py", "eval/judge/",
                    "eval/heldout.py", "eval/domains.py", "eval/judge_agreement.py", "eval/technical.py")
JAX_MODULES = {"model", "checkpoints", "interventions", "train", "metrics", "directions", "eval.generate", "eval.chat",
               "eval.local_judge"}


def _package(rel: str) -> str:
    return Path(rel).parts[0].removesuffix(".py")


def _imports(rel: str, source: str) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in a module's source, relative imports resolved."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or node.level):
            base = node.module or ""
            if node.level:
                parts = ["emjax"] + list(Path(rel).with_suffix("").parts)[:-node.level]
                base = ".".join(parts + ([base] if base else []))
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def upward_imports(rel: str, source: str) -> list[str]:
    """The imports of module `rel` (path under emjax/) that point above its layer."""
    own = _package(rel)
    bad = []
    for line, mod in _imports(rel, source):
        parts = mod.split(".")
        if parts[0] == "emjax" and len(parts) > 1:
            target = parts[1]
            if target in ALLOWED and target != own and target not in ALLOWED[own]:
                bad.append(f"line {line}: {mod}")
    return bad


def jax_imports(rel: str, source: str) -> list[str]:
    """The imports of module `rel` that pull in JAX (directly or through a JAX package of emjax)."""
    bad = []
    for line, mod in _imports(rel, source):
        parts = mod.split(".")
        if parts[0] in ("jax", "jaxlib", "flax", "optax", "orbax"):
            bad.append(f"line {line}: {mod}")
        if parts[0] == "emjax" and len(parts) > 1 and (parts[1] in JAX_MODULES or ".".join(parts[1:3]) in JAX_MODULES):
            bad.append(f"line {line}: {mod}")
    return bad


MODULES = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py"))


def test_every_package_has_a_rule():
    assert {_package(m) for m in MODULES} <= set(ALLOWED)


@pytest.mark.parametrize("rel", MODULES)
def test_imports_point_down(rel):
    bad = upward_imports(rel, (PACKAGE / rel).read_text())
    assert not bad, f"emjax/{rel} imports above its layer: {bad}"


@pytest.mark.parametrize("rel", [m for m in MODULES if m.startswith(ACCELERATOR_FREE)])
def test_judge_stage_imports_no_jax(rel):
    bad = jax_imports(rel, (PACKAGE / rel).read_text())
    assert not bad, f"emjax/{rel} must not import JAX: {bad}"


def test_the_checks_catch_violations():
    """The checkers themselves, on made-up modules: nested, relative and plain imports are seen."""
    src = "import os\ndef f():\n    from emjax.train.trainer import Trainer\n    return Trainer\n"
    assert upward_imports("model/probe.py", src) == ["line 3: emjax.train.trainer", "line 3: emjax.train.trainer.Trainer"]
    assert upward_imports("metrics/probe.py", src) == []
    assert upward_imports("data/probe.py", "from ..model import decoder\n") == ["line 1: emjax.model", "line 1: emjax.model.decoder"]
    assert jax_imports("eval/judge/probe.py", "import jax.numpy as jnp\n") == ["line 1: jax.numpy"]
    assert jax_imports("eval/report.py", "from emjax.eval.generate import generate\n")[0] == "line 1: emjax.eval.generate"
    assert jax_imports("eval/report.py", "from emjax.eval.questions import Question\n") == []
