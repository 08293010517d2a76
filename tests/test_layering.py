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
    # evaluation without accelerators (questions, judge, report): no JAX package (see JAX_PACKAGES)
    "eval": {"arg_types", "errors", "data"},
    # evaluation that runs a model: generate, chat, the local judge
    "inference": {"arg_types", "timings", "errors", "model", "data", "checkpoints", "interventions", "eval"},
    "directions": {"arg_types", "errors", "model", "data", "checkpoints", "interventions", "train", "eval"},
    "metrics": {"timings", "errors", "model", "data", "checkpoints", "interventions", "train", "configuration", "directions"},
    # whole-pipeline jobs (main, technical, main_summary): every stage package below them
    "jobs": {"timings", "errors", "model", "data", "checkpoints", "interventions", "train", "metrics", "eval",
             "inference", "configuration"},
    "experiments": {"errors", "model", "data", "checkpoints", "interventions", "train", "eval", "inference",
                    "configuration", "directions", "jobs"},
    "launch": {"arg_types", "errors", "model", "configuration", "interventions", "train"},
    "cli": {"arg_types", "timings", "errors", "model", "data", "checkpoints", "train", "metrics", "eval", "inference",
            "configuration", "jobs", "directions", "launch", "experiments"},
    "__main__": {"cli"},
    "__init__": set(),
}
# Packages that run on machines without accelerators (the judge stage, the report): none of their
# modules imports JAX or a JAX package of emjax.
ACCELERATOR_FREE = ("eval/",)
# emjax packages that import JAX (`timings` uses jax.monitoring).
JAX_PACKAGES = {"timings", "model", "checkpoints", "interventions", "train", "metrics", "directions", "inference",
                "experiments", "launch", "jobs"}


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
        if parts[0] == "emjax" and len(parts) > 1 and parts[1] in JAX_PACKAGES:
            bad.append(f"line {line}: {mod}")
    return bad


def module_name(rel: str) -> str:
    """Dotted name of the module at `rel` (path under emjax/): a package's __init__.py is the package."""
    parts = list(Path(rel).with_suffix("").parts)
    return ".".join(["emjax"] + (parts[:-1] if parts[-1] == "__init__" else parts))


def module_edges(rel: str, source: str, modules: set[str]) -> set[str]:
    """The emjax modules that module `rel` imports: every import (module level, inside a function or
    under TYPE_CHECKING). `from pkg import sub` points at the submodule `pkg.sub`, not at `pkg`."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and (node.module or node.level):
            base = node.module or ""
            if node.level:
                parts = ["emjax"] + list(Path(rel).with_suffix("").parts)[:-node.level]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                if f"{base}.{a.name}" in modules:
                    out.add(f"{base}.{a.name}")
                elif base in modules:
                    out.add(base)
    return out - {module_name(rel)}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` (module -> the modules it imports) as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


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
    assert jax_imports("eval/report.py", "from emjax.inference.generate import generate\n")[0] == "line 1: emjax.inference.generate"
    assert jax_imports("eval/report.py", "from emjax.eval.questions import Question\n") == []
    assert jax_imports("eval/judge/probe.py", "from ...timings import phase\n")[0] == "line 1: emjax.timings"


def import_graph() -> dict[str, set[str]]:
    """module -> the emjax modules it imports, over every module of emjax/."""
    names = {module_name(m) for m in MODULES}
    return {module_name(m): module_edges(m, (PACKAGE / m).read_text(), names) for m in MODULES}


def test_no_import_circles():
    """No module imports (directly or through others) a module that imports it, inside a package
    or across packages; an import inside a function or under TYPE_CHECKING counts too."""
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import circle: {' -> '.join(cycle)}"


def test_accelerator_free_packages_may_use_no_jax_package():
    """The rule table itself keeps the JAX-free packages off the JAX packages."""
    for prefix in ACCELERATOR_FREE:
        package = prefix.rstrip("/").removesuffix(".py")
        assert not ALLOWED[package] & JAX_PACKAGES, f"{package} may not use {ALLOWED[package] & JAX_PACKAGES}"


def test_the_graph_sees_circles():
    """The circle finder and the edge reader on made-up modules."""
    names = {"emjax.a", "emjax.a.x", "emjax.b"}
    assert module_edges("a/__init__.py", "from .x import f\n", names) == {"emjax.a.x"}
    assert module_edges("b.py", "def f():\n    from emjax.a import x\n", names) == {"emjax.a.x"}
    assert module_edges("b.py", "from emjax.a import thing\n", names) == {"emjax.a"}
    assert module_edges("a/x.py", "import typing\nif typing.TYPE_CHECKING:\n    import emjax.b\n", names) == {"emjax.b"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"d": {"a"}, "a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
