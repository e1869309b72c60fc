"""Guardrail: imports point one way, down the pipeline of ../shared/design.md (style rule 1).

A module of package P may import `dojo.Q` only when Q sits on a lower layer than P (or Q is P).
The layer table is the one in docs/architecture.md; a new package must be added to both.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "dojo"

LAYERS: dict[str, int] = {
    "errors": 0,
    "config": 0,
    "registry": 0,
    "units": 0,
    "paths": 0,
    "hardware": 1,
    "graph": 2,
    "numerics": 2,
    "models": 3,
    "capture": 3,
    "data": 3,
    "plan": 4,
    "compiler": 5,
    "sim": 6,
    "runtime": 7,
    "report": 8,
    "train": 9,  # the main job: uses report and everything below it
    "service": 10,  # the multi-tenant server: nothing below may import it
    "client": 10,  # HTTP client of the service: talks to it over HTTP only, never imports it
    "cli": 11,
}


# The core modules sit together on layer 0 and may use one another.
CORE = {"errors", "config", "registry", "units", "paths"}


def _package_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name == "dojo" or name.startswith("dojo.")]


def _sources() -> list[Path]:
    return [p for p in sorted(SRC.rglob("*.py")) if p != SRC / "__init__.py"]


def test_every_package_has_a_layer() -> None:
    packages = {_package_of(p) for p in _sources()}
    missing = sorted(packages - set(LAYERS))
    assert not missing, f"packages without a layer in tests/test_layers.py: {missing}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path) -> None:
    own = _package_of(path)
    bad = []
    for line, name in _imports(path):
        parts = name.split(".")
        if len(parts) < 2:
            bad.append(f"line {line}: bare 'import dojo' (import the layer you need)")
            continue
        target = parts[1]
        if target == own or (target in CORE and own in CORE):
            continue
        if LAYERS.get(target, 99) >= LAYERS[own]:
            bad.append(f"line {line}: {own} (layer {LAYERS[own]}) imports {name} "
                       f"(layer {LAYERS.get(target)})")
    assert not bad, "\n".join(bad)


def test_the_guard_catches_a_backward_import(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("from dojo.cli.main import main\nimport dojo.sim\n", encoding="utf-8")
    names = [name for _, name in _imports(sample)]
    assert names == ["dojo.cli.main", "dojo.sim"]
    assert LAYERS["cli"] > LAYERS["hardware"] and LAYERS["sim"] > LAYERS["graph"]
