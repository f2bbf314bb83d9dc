"""No module outside the driver package reads a private attribute of the driver.

The driver (``asyncdicom/association/``) is used through its public API only: establishment,
DIMSE primitives, state.  The check is static: every private name the package defines on its
objects (``self._x = ...`` and ``def _x``) is collected, and every other module of asyncdicom is
searched for an attribute access ``something._x`` with such a name on anything but ``self`` or
``cls`` (a module's own objects with a private name of the same spelling count too: the rule is
kept simple and strict, and a rename is cheap).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "asyncdicom"
DRIVER = PACKAGE / "association"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def driver_private_names() -> set[str]:
    names: set[str] = set()
    for path in DRIVER.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(node.name):
                names.add(node.name)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and isinstance(node.ctx, ast.Store)
                and _private(node.attr)
            ):
                names.add(node.attr)
    return names


def private_reads(source: str, names: set[str]) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in names
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append((node.lineno, node.attr))
    return found


def test_the_rule_sees_private_reads() -> None:
    names = driver_private_names()
    assert {"_core", "_run_reader", "_flush", "_raise_if_gone"} <= names
    bad = "async def f(assoc):\n    await assoc._flush()\n    return assoc._core.state\n"
    assert sorted(private_reads(bad, names)) == [(2, "_flush"), (3, "_core")]
    assert private_reads("def f(self):\n    return self._core\n", names) == []


def test_no_module_outside_the_driver_reads_its_private_attributes() -> None:
    names = driver_private_names()
    offenders: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if DRIVER in path.parents:
            continue
        for line, attr in private_reads(path.read_text(), names):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: .{attr}")
    assert offenders == [], "\n".join(offenders)
