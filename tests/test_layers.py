"""The package's imports point one way: base -> models -> export -> quantize -> runtimes -> targets -> harness -> cli
(docs/architecture.md). Every `from t2tedge...` / `import t2tedge...` is checked, including those inside functions."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"core": "t2tedge", "cli": "t2tedge.cli", "models": "t2tedge.models", "export": "t2tedge.export", "quantize": "t2tedge.quantize",
           "runtimes": "t2tedge.runtimes", "targets": "t2tedge.targets", "harness": "t2tedge.harness"}
ORDER = ["base", "models", "export", "quantize", "runtimes", "targets", "harness", "cli"]


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and f"t2tedge.{parts[1]}" in FOLDERS.values():
        return parts[1]
    return "base"  # t2tedge itself and its plain modules: errors, paths, fileio, data, onnx_graph, ...


def imports_of(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("t2tedge"):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("t2tedge")]
    return found


def modules() -> list[tuple[Path, str]]:
    return [(path, f"{package}.{path.stem}" if path.stem != "__init__" else package)
            for folder, package in FOLDERS.items() for path in sorted((ROOT / folder).glob("*.py"))]


def upward_edges() -> list[str]:
    edges = []
    for path, module in modules():
        source = ORDER.index(layer_of(module))
        for line, target in imports_of(path):
            if ORDER.index(layer_of(target)) > source:
                edges.append(f"{path.relative_to(ROOT)}:{line} ({layer_of(module)}) imports {target} ({layer_of(target)})")
    return edges


def test_imports_only_point_down():
    assert upward_edges() == []


def test_the_check_sees_an_edge_that_points_up(tmp_path, monkeypatch):
    """The walker itself: a base module importing the runtimes would be caught, also inside a function."""
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "helper.py").write_text("def f():\n    from t2tedge.runtimes.base import Runtime\n")
    for folder in FOLDERS:
        (tmp_path / folder).mkdir(exist_ok=True)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert upward_edges() == ["core/helper.py:2 (base) imports t2tedge.runtimes.base (runtimes)"]


@pytest.mark.parametrize("module,layer", [("t2tedge.errors", "base"), ("t2tedge.cli", "cli"), ("t2tedge.cli.app", "cli"),
                                          ("t2tedge.models.train", "models"), ("t2tedge.harness.table4", "harness")])
def test_layer_names(module, layer):
    assert layer_of(module) == layer
