"""Start-up: what ``import asyncdicom`` and a small command load (issue: start-up time).

Health checks and scripts call ``asyncdicom echoscu`` in a loop and pay its start-up each time;
the bulk of it was importing pydicom, structlog, trio, rich and every app before the command
line was even parsed.  These tests pin the modules that must stay out of a bare import and of
``echoscu`` (its ``--help`` and a run that fails to connect), each in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: modules no bare ``import asyncdicom`` loads (the public names load on first use)
NOT_ON_IMPORT = (
    "pydicom",
    "structlog",
    "trio",
    "rich",
    "sqlite3",
    "ssl",
    "hdrh",
    "anyio",
    "asyncdicom.ae",
    "asyncdicom.services",
    "asyncdicom.protocol",
)

#: modules ``asyncdicom echoscu`` never needs: data sets, the archive, other apps, the load
#: tester, logging machinery on a quiet run, and the trio backend on the default one
NOT_FOR_ECHOSCU = (
    "pydicom",
    "structlog",
    "trio",
    "rich",
    "sqlite3",
    "hdrh",
    "asyncdicom.archive",
    "asyncdicom.qr",
    "asyncdicom.loadtest",
    "asyncdicom.storage.reader",
    "asyncdicom.cli.storescu",
    "asyncdicom.cli.qrscp",
    "asyncdicom.cli.bench",
    "asyncdicom.cli.demo",
)

_REPORT = "import json, sys; sys.stderr.write('MODULES' + json.dumps(sorted(sys.modules)))"


def _loaded(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code`` (then the report)."""
    script = textwrap.dedent(code) + "\n" + _REPORT + "\n"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    marker = done.stderr.rfind("MODULES")
    assert marker >= 0, done.stderr
    return set(json.loads(done.stderr[marker + len("MODULES") :]))


def _under(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` (a module or a package with its submodules) are in ``modules``."""
    return sorted(
        name for name in names if any(m == name or m.startswith(name + ".") for m in modules)
    )


def test_bare_import_loads_nothing_heavy() -> None:
    modules = _loaded("import asyncdicom")
    assert "asyncdicom" in modules
    assert _under(modules, NOT_ON_IMPORT) == []


def test_public_names_still_load_on_first_use() -> None:
    modules = _loaded(
        """
        import asyncdicom
        assert asyncdicom.AE.__name__ == "AE"
        assert asyncdicom.uids.VERIFICATION == "1.2.840.10008.1.1"
        assert "AE" in dir(asyncdicom)
        """
    )
    assert "asyncdicom.ae" in modules


def _run_cli(*argv: str) -> str:
    return f"""
        import sys
        from asyncdicom.cli.main import main
        try:
            status = main({list(argv)!r})
        except SystemExit as exc:
            status = exc.code
        sys.stderr.write(f"STATUS={{status}}\\n")
        """


def test_echoscu_help_loads_only_what_it_needs() -> None:
    modules = _loaded(_run_cli("echoscu", "--help"))
    assert "asyncdicom.cli.echoscu" in modules
    assert _under(modules, NOT_FOR_ECHOSCU) == []


def test_echoscu_run_loads_only_what_it_needs() -> None:
    """A real run: the association attempt fails at once (nothing listens on the port)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        # bound, not listening: a connection is refused
        modules = _loaded(_run_cli("echoscu", "127.0.0.1", str(port)))
    assert "asyncdicom.ae" in modules
    assert "anyio._backends._asyncio" in modules
    assert _under(modules, NOT_FOR_ECHOSCU) == []


@pytest.mark.parametrize("app", ["storescp", "findscu", "users"])
def test_one_app_does_not_load_the_others(app: str) -> None:
    from asyncdicom.cli.apps import APPS

    modules = _loaded(_run_cli(app, "--help"))
    others = tuple(f"asyncdicom.cli.{name}" for name in APPS if name != app)
    assert f"asyncdicom.cli.{app}" in modules
    assert _under(modules, others) == []


def test_the_apps_help_lines_are_the_apps_own() -> None:
    """``asyncdicom --help`` lists each app with the help line its full parser has."""
    import argparse

    from asyncdicom.cli.apps import APPS
    from asyncdicom.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    assert helps == APPS
    assert all(len(sub.choices[name]._actions) > 3 for name in APPS)


# --------------------------------------------------------------------------- lazy imports


def _is_type_checking_block(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    )


def _type_checking_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and _is_type_checking_block(node):
            for statement in node.body:
                if isinstance(statement, (ast.Import, ast.ImportFrom)):
                    names |= {(a.asname or a.name).split(".")[0] for a in statement.names}
    return names


def _module_names(tree: ast.Module) -> set[str]:
    """Names bound at module level outside ``if TYPE_CHECKING:``."""
    bound: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return bound


def _runtime_uses(tree: ast.Module, names: set[str]) -> list[tuple[int, str]]:
    """Where code that runs (not an annotation, not ``cast``'s type, not a type-checking
    block) reads one of ``names`` without importing it in its own function."""
    ignored: set[int] = set()
    for node in ast.walk(tree):
        for field in ("annotation", "returns"):
            sub = getattr(node, field, None)
            if sub is not None:
                ignored |= {id(n) for n in ast.walk(sub)}
        if _is_type_checking_block(node):
            ignored |= {id(n) for n in ast.walk(node)}
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "cast"
        ):
            ignored |= {id(n) for arg in node.args[:1] for n in ast.walk(arg)}
    found: list[tuple[int, str]] = []

    def walk(node: ast.AST, bound: set[str]) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local = set(bound)
            for n in ast.walk(node):
                if isinstance(n, (ast.Import, ast.ImportFrom)):
                    local |= {(a.asname or a.name).split(".")[0] for a in n.names}
            for statement in node.body:
                walk(statement, local)
            for outer in [*node.decorator_list, *node.args.defaults]:
                walk(outer, bound)
            return
        if (
            isinstance(node, ast.Name)
            and isinstance(node.ctx, ast.Load)
            and node.id in names
            and node.id not in bound
            and id(node) not in ignored
        ):
            found.append((node.lineno, node.id))
        for child in ast.iter_child_nodes(node):
            walk(child, bound)

    for statement in tree.body:
        walk(statement, set())
    return found


def test_names_imported_for_type_checking_only_are_not_used_at_run_time() -> None:
    """A module that imports pydicom (or anything) under ``TYPE_CHECKING`` to keep start-up
    light must import it in each function that uses it at run time: mypy and ruff do not see
    the difference, a user would see a NameError."""
    import asyncdicom

    root = Path(asyncdicom.__file__).parent
    problems = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = _type_checking_names(tree) - _module_names(tree)
        problems += [
            f"{path.relative_to(root)}:{line}: {name}" for line, name in _runtime_uses(tree, names)
        ]
    assert problems == []


def test_the_run_time_check_sees_a_missing_import() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from pydicom.dataset import Dataset\n"
        "def good(x: Dataset) -> Dataset:\n"
        "    from pydicom.dataset import Dataset\n"
        "    return Dataset()\n"
        "def bad() -> None:\n"
        "    return Dataset()\n"
    )
    assert _runtime_uses(tree, _type_checking_names(tree)) == [(8, "Dataset")]
