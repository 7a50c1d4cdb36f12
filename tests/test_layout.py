"""The package's layout: subpackages only at the top level, imports that go down the layers
(conf, types <- models/data <- lit/evaluation <- runs <- report), no import cycles (function-level
imports included), the report never reaching the models, and every module importable in a
fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "zf_lightning"

# layer of each top-level part of the package: a module may import lower layers and its own part
LAYERS = {
    "conf": 0,  # the config tree: YAML, where it lives, and its catalog of groups and options
    "types": 0,
    "models": 1,
    "data": 1,
    "lit": 2,
    "evaluation": 2,
    "runs": 3,
    "report": 4,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def internal_imports(path: Path) -> set[str]:
    """Every ``zf_lightning`` module that ``path`` imports, at any depth (functions included).

    ``from zf_lightning.x import name`` counts as importing ``zf_lightning.x.name`` when that is
    a module, else ``zf_lightning.x``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        found.update(n for n in names if n.startswith("zf_lightning"))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for imported in internal_imports(path):
            # the longest known module that the import names (a symbol import names its module)
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            if imported in modules and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else ""


def test_the_top_level_holds_only_types_and_subpackages() -> None:
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert modules == ["__init__.py", "types.py"]
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert sorted(LAYERS) == sorted(["types", *packages])


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles_even_inside_functions() -> None:
    graph = import_graph()
    assert len(graph) > 40  # the walk saw the package
    assert find_cycle(graph) is None


def test_imports_go_down_the_layers() -> None:
    wrong = []
    for module, targets in import_graph().items():
        for target in targets:
            if part(target) == part(module):
                continue
            if LAYERS[part(target)] >= LAYERS[part(module)]:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_the_report_never_reaches_the_models() -> None:
    """It reads records of many jobs; none of its imports, direct or through runs/, loads a model."""
    graph = import_graph()
    seen: set[str] = set()
    todo = [m for m in graph if part(m) == "report"]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    assert len([m for m in seen if part(m) == "report"]) > 5
    assert sorted(m for m in seen if part(m) == "models") == []


def test_a_layer_violation_is_detected(tmp_path: Path) -> None:
    """The walker sees function-level imports, which is what hid the old cycles."""
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from zf_lightning.runs.pipeline import train\n    return train\n")
    assert "zf_lightning.runs.pipeline.train" in internal_imports(source)


@pytest.mark.slow
def test_every_module_imports_in_a_fresh_interpreter() -> None:
    names = sorted(module_name(p) for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\nprint('ok')"
    result = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True,
                            cwd=PACKAGE.parent, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


def test_hydras_running_job_is_read_in_one_module() -> None:
    """The run context is built where Hydra hands over and passed down: only runs/context.py reads
    ``HydraConfig`` (Hydra callbacks get their config as an argument)."""
    readers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if "HydraConfig" in p.read_text())
    assert readers == ["runs/context.py"]
