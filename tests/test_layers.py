"""Imports point down only (DESIGN.md): a lower layer never imports an upper one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "parley"

# Each package (or top-level module) and the parley modules it must not import.
FORBIDDEN = {
    "ids": ("",),  # a leaf: nothing of parley
    "content": ("",),
    "errors": (
        "audio",
        "engines",
        "pipeline",
        "realtime",
        "server",
        "store",
        "cli",
        "commands",
        "models",
    ),
    "audio": (
        "engines",
        "pipeline",
        "realtime",
        "server",
        "store",
        "cli",
        "commands",
        "models",
        "bench",
    ),
    "store": ("engines", "pipeline", "realtime", "server", "cli", "commands", "models", "bench"),
    "engines": ("pipeline", "realtime", "server", "cli", "commands", "models", "bench"),
    "trust": ("pipeline", "realtime", "server", "cli", "commands", "models", "bench"),
    "routing": ("pipeline", "realtime", "server", "cli", "commands", "models", "bench"),
    "ledger": ("pipeline", "realtime", "server", "cli", "commands", "models", "bench"),
    "pipeline": ("realtime", "server", "cli", "commands", "models", "bench"),
    "realtime": ("server", "cli", "commands", "models", "bench"),
    "transports": ("pipeline", "realtime", "server", "cli", "commands", "models", "bench"),
    "server": ("cli", "commands"),
    "bench": ("cli", "commands"),
}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "parley" or name.startswith("parley.")}


def _layer(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_layers_imports_point_down(path: Path) -> None:
    forbidden = FORBIDDEN.get(_layer(path), ())
    for name in _imports(path):
        below = name.removeprefix("parley").removeprefix(".")
        top = below.split(".")[0]
        for banned in forbidden:
            assert banned != "" or top in ("", _layer(path)), f"{path.name} imports {name}"
            assert not banned or top != banned, f"{path.relative_to(SRC)} imports {name}"


def test_layers_modules_stay_small() -> None:
    big = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert not big, f"modules over 600 lines: {big}"
