"""The package graph of docs/architecture.md, read from every module's imports.

- ``javia_core`` is pure: it imports no other javia package and no network,
  database or terminal library;
- the agent (``javia_agent``) imports ``javia_core``, never the server, the
  operator's tools or the dev tools;
- the server and operator's tools (``javia_updates``) never import the agent
  or the dev tools;
- only the console-script package (``javia_cli``) wires them all together.

Every ``import`` and ``from ... import`` counts, at module level or inside a
function, under ``TYPE_CHECKING`` or not: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Libraries that do I/O or drive a terminal: never in the pure core.
IO_LIBRARIES = frozenset(
    {
        "aiohttp",
        "alembic",
        "fastapi",
        "httpx",
        "psycopg",
        "questionary",
        "rich",
        "sqlalchemy",
        "starlette",
        "typer",
        "click",
        "uvicorn",
    }
)

#: package → top-level names it must never import.
FORBIDDEN: dict[str, frozenset[str]] = {
    "javia_core": frozenset({"javia_updates", "javia_agent", "javia_devtools", "javia_cli"})
    | IO_LIBRARIES,
    "javia_agent": frozenset({"javia_updates", "javia_devtools", "javia_cli"}),
    "javia_updates": frozenset({"javia_agent", "javia_devtools", "javia_cli"}),
    "javia_devtools": frozenset({"javia_cli"}),
}


def _imported_modules(source: str, package_parts: list[str]) -> set[str]:
    """Absolute names of every module ``source`` imports (relative imports resolved).

    Args:
        source: a module's text.
        package_parts: the package the module is in (``["javia_agent"]`` for
            ``javia_agent/cli.py``, and for ``javia_agent/__init__.py``).
    """
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - (node.level - 1)]
                names.add(".".join([*base, node.module] if node.module else base))
            else:
                names.add(node.module or "")
    return names


def _package_parts(path: Path) -> list[str]:
    return list(path.relative_to(SRC).parent.parts)


def _modules_of(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_inside_its_boundary(package: str) -> None:
    modules = _modules_of(package)
    assert modules, f"no modules found for {package}"
    violations = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in modules
        for name in sorted(
            _imported_modules(path.read_text(encoding="utf-8"), _package_parts(path))
        )
        if name.split(".")[0] in FORBIDDEN[package]
    ]
    assert violations == []


def test_every_package_under_src_has_a_rule() -> None:
    packages = {
        path.name for path in SRC.iterdir() if path.is_dir() and (path / "__init__.py").exists()
    }
    assert packages == {*FORBIDDEN, "javia_cli"}


def test_the_checker_sees_lazy_and_relative_imports() -> None:
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import httpx\n"
        "def later():\n    from javia_updates.keys import generate_keypair\n"
        "from . import sibling\n"
        "from ..other import thing\n"
    )
    names = _imported_modules(source, ["javia_core", "sub"])
    assert {"httpx", "javia_updates.keys", "javia_core.sub", "javia_core.other"} <= names


def test_aiohttp_is_installed_only_with_the_sim_extra() -> None:
    import tomllib

    project = tomllib.loads((SRC.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def names(requirements: list[str]) -> set[str]:
        return {
            requirement.split("[")[0].split(">")[0].split("=")[0] for requirement in requirements
        }

    assert "aiohttp" not in names(project["dependencies"])  # a device's `pip install .`
    assert "aiohttp" not in names(project["optional-dependencies"]["server"])
    assert "aiohttp" in names(project["optional-dependencies"]["sim"])
