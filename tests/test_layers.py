"""The layers in DESIGN.md, checked on the source: who may import whom.

Reads every module's imports with `ast` (top level and inside functions: a lazy import is still a dependency),
so a shortcut across layers fails here instead of in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ccgate

PACKAGE = Path(ccgate.__file__).parent
# Libraries that do I/O or drive a terminal: the pure layers must not need them.
IO_LIBRARIES = frozenset({"aiohttp", "sqlite3", "sqlite_utils", "keyring", "typer", "rich", "asyncpg", "psycopg"})
TERMINAL_LIBRARIES = frozenset({"typer", "rich"})
PURE_PACKAGES = ("core", "wire")
# A layer may import only from the layers listed for it (and from itself, `errors`, `env` and the package root).
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "wire": frozenset({"core"}),
    "local": frozenset({"core"}),
    "storage": frozenset({"core", "local"}),
    "proxy": frozenset({"core", "wire", "local"}),
    "sidecar": frozenset({"core", "wire", "local", "storage", "proxy"}),
    "gateway": frozenset({"core", "wire", "local", "storage", "proxy"}),
    "features": frozenset({"core", "wire", "local", "storage", "proxy", "sidecar"}),
    "client": frozenset({"core", "wire", "local", "storage", "proxy", "sidecar"}),
}
ROOT_MODULES = frozenset({"errors", "env", "__init__", "__main__"})


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_names(path: Path, package: str | None = None) -> set[str]:
    """Every module `path` imports, absolute dotted names (relative imports resolved against `package`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if package is None:
        package = ".".join(("ccgate", *path.relative_to(PACKAGE).with_suffix("").parts[:-1]))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            # `from ccgate import fastjson` imports the module ccgate.wire.fastjson
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def ccgate_layers(names: set[str]) -> set[str]:
    out = set()
    for name in names:
        parts = name.split(".")
        if parts[0] == "ccgate" and len(parts) > 1 and (PACKAGE / parts[1]).is_dir():
            out.add(parts[1])
    return out


def test_the_layers_are_folders() -> None:
    for layer in ("core", "wire", "proxy", "local", "storage", "sidecar", "features", "cli"):
        assert (PACKAGE / layer / "__init__.py").is_file(), layer
    loose = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ROOT_MODULES)
    assert loose == [], f"modules outside a layer folder: {loose}"


@pytest.mark.parametrize("layer", PURE_PACKAGES)
def test_pure_layers_import_no_io_library(layer: str) -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): sorted({n.split(".")[0] for n in imported_names(path)} & IO_LIBRARIES)
        for path in (PACKAGE / layer).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_cli_imports_typer_and_rich() -> None:
    offenders = {
        str(path.relative_to(PACKAGE)): sorted({n.split(".")[0] for n in imported_names(path)} & TERMINAL_LIBRARIES)
        for path in modules()
        if layer_of(path) != "cli"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_each_layer_imports_only_layers_below_it() -> None:
    offenders: dict[str, list[str]] = {}
    for path in modules():
        layer = layer_of(path)
        if layer not in ALLOWED:
            continue
        wrong = sorted(ccgate_layers(imported_names(path)) - ALLOWED[layer] - {layer})
        if wrong:
            offenders[str(path.relative_to(PACKAGE))] = wrong
    assert offenders == {}


def test_sidecar_and_gateway_never_import_each_other() -> None:
    for path in modules():
        layer = layer_of(path)
        other = {"sidecar": "gateway", "gateway": "sidecar"}.get(layer)
        if other is not None:
            assert other not in ccgate_layers(imported_names(path)), path


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The checks above would catch a shortcut: a lazy or relative import inside a function counts."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f():\n    import aiohttp\n    from ..sidecar import app\n    from ccgate import rich_thing\n"
    )
    names = imported_names(sample, "ccgate.core")
    assert "aiohttp" in names
    assert "sidecar" in ccgate_layers(names)
    assert "ccgate.rich_thing" in names


def test_environment_variable_names_live_in_env_py() -> None:
    """A `CCGATE_*` name spelt out anywhere but `env.py` is one that can drift from the README's table."""
    import re

    name = re.compile(r"CCGATE_[A-Z0-9_]+")
    found = []
    for path in modules():
        if path == PACKAGE / "env.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and name.fullmatch(node.value):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value}")
    assert found == [], "use the constants in ccgate.env:\n" + "\n".join(found)
