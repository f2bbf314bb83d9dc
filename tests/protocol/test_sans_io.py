"""The sans-IO rule: ``asyncdicom.protocol`` performs no I/O and reads no clock.

Two independent checks:

* a static one: every ``.py`` file under ``asyncdicom/protocol`` is parsed and every import (at any
  nesting level: in functions, ``try`` blocks, ``if TYPE_CHECKING``) and every
  ``importlib.import_module`` / ``__import__`` call is compared with the forbidden names;
* a dynamic one: a fresh interpreter imports every submodule (found with :mod:`pkgutil`) with a
  meta-path finder and an ``__import__`` hook installed, and reports what was imported, by whom.

The forbidden names come in two groups:

* I/O and event-loop libraries (:data:`IO_MODULES`) must not be loaded *at all* while importing the
  protocol package, neither by our code nor by anything it pulls in: the core has to be importable
  and usable under any event loop, or none.
* ``threading`` and ``time`` (:data:`OWN_CODE_ONLY`): the protocol never starts threads and never
  reads a clock (the driver passes ``now``), so our code must not import them.  The standard
  library itself may (``time`` is loaded at interpreter start-up; ``logging`` imports both), so for
  these two the dynamic check attributes each import to the module that executed it.

The subprocess does not run ``asyncdicom/__init__.py``: the top-level package is allowed to
re-export the async API (and thereby import anyio); it is replaced by an empty package object with
the right ``__path__``, so that only ``asyncdicom.protocol`` and whatever *it* imports are loaded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TypedDict

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO_ROOT / "asyncdicom"
PROTOCOL_DIR = PACKAGE_DIR / "protocol"

#: Must not be imported by anything while the protocol package is imported.
IO_MODULES = frozenset(
    {
        "anyio",
        "trio",
        "sniffio",
        "asyncio",
        "_asyncio",
        "socket",
        "_socket",
        "ssl",
        "_ssl",
        "selectors",
        "select",
    }
)
#: Must not be imported by asyncdicom's own code (the standard library may import them).
OWN_CODE_ONLY = frozenset({"threading", "time"})
FORBIDDEN = IO_MODULES | OWN_CODE_ONLY

#: Names under which a call imports the module named by its first argument.
_IMPORT_CALLS = frozenset({"import_module", "__import__"})

# ---------------------------------------------------------------------------------------------
# Static check
# ---------------------------------------------------------------------------------------------


def _call_name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def forbidden_imports(source: str, filename: str = "<string>") -> list[str]:
    """Return one message per forbidden (or unverifiable) import found in ``source``."""
    problems: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.partition(".")[0] in FORBIDDEN:
                    problems.append(f"{filename}:{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            # Relative imports (level > 0) resolve inside asyncdicom, never to the stdlib.
            module = node.module or ""
            if node.level == 0 and module.partition(".")[0] in FORBIDDEN:
                problems.append(f"{filename}:{node.lineno}: from {module} import ...")
        elif isinstance(node, ast.Call) and _call_name(node.func) in _IMPORT_CALLS:
            if not node.args:
                continue
            target = node.args[0]
            if isinstance(target, ast.Constant) and isinstance(target.value, str):
                name = target.value
                if not name.startswith(".") and name.partition(".")[0] in FORBIDDEN:
                    problems.append(f"{filename}:{node.lineno}: dynamic import of {name!r}")
            else:
                # A computed module name defeats this check; the protocol has no need for one.
                problems.append(f"{filename}:{node.lineno}: import with a non-literal module name")
    return problems


def _protocol_sources() -> list[Path]:
    return sorted(PROTOCOL_DIR.rglob("*.py"))


def test_protocol_sources_exist() -> None:
    names = {p.name for p in _protocol_sources()}
    # The modules that existed when this test was written; the scan covers every later one too.
    assert {"__init__.py", "errors.py", "pdu.py"} <= names


@pytest.mark.parametrize(
    "path", _protocol_sources(), ids=lambda p: p.relative_to(PROTOCOL_DIR).as_posix()
)
def test_no_forbidden_import_in_source(path: Path) -> None:
    rel = path.relative_to(REPO_ROOT).as_posix()
    assert forbidden_imports(path.read_text(encoding="utf-8"), rel) == []


@pytest.mark.parametrize(
    "snippet",
    [
        "import socket",
        "import os, ssl",
        "import anyio.abc as abc",
        "from trio import lowlevel",
        "from asyncio.events import get_event_loop",
        "def f():\n    import time\n    return time.monotonic()",
        "try:\n    import sniffio\nexcept ImportError:\n    pass",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import selectors",
        "class C:\n    def m(self):\n        from threading import Lock",
        "import importlib\nimportlib.import_module('socket')",
        "from importlib import import_module\nimport_module('trio.lowlevel')",
        "__import__('time')",
        "import importlib\nname = 'sock' + 'et'\nimportlib.import_module(name)",
    ],
)
def test_static_check_detects(snippet: str) -> None:
    assert len(forbidden_imports(snippet)) == 1


@pytest.mark.parametrize(
    "snippet",
    [
        "import struct, zlib, enum",
        "from dataclasses import dataclass",
        "from . import socket",  # asyncdicom.protocol.socket, not the stdlib module
        "from .time_util import x",
        "import importlib\nimportlib.import_module('.pdu', __package__)",
        "sockets = 1\ntimeout = 2.0",
    ],
)
def test_static_check_allows(snippet: str) -> None:
    assert forbidden_imports(snippet) == []


# ---------------------------------------------------------------------------------------------
# Dynamic check (in a fresh interpreter)
# ---------------------------------------------------------------------------------------------

# Runs as ``python -I -c CHILD TOP_NAME TOP_DIR SUBPACKAGE IO_NAMES OWN_NAMES``; prints JSON.
CHILD = textwrap.dedent(
    """
    import builtins, importlib, importlib.machinery, json, pkgutil, sys, traceback, types

    top_name, top_dir, subpackage = sys.argv[1:4]
    io_names = frozenset(sys.argv[4].split(","))
    own_names = frozenset(sys.argv[5].split(","))
    forbidden = io_names | own_names
    preloaded = sorted(m for m in sys.modules if m.partition(".")[0] in forbidden)
    attempts = []    # loads of forbidden modules seen by the meta-path finder (any importer)
    own = []         # forbidden imports executed by code of the package under test

    def ours(name):
        return name == top_name or name.startswith(top_name + ".")

    hook_codes = set()  # frames of this script's hooks are not importers

    def import_chain():
        # Module names of the frames executing imports, innermost first.
        chain = []
        frame = sys._getframe(1)
        while frame is not None:
            name = frame.f_globals.get("__name__", "?")
            if (
                frame.f_code not in hook_codes
                and not name.startswith("importlib")
                and (not chain or chain[-1] != name)
            ):
                chain.append(name)
            frame = frame.f_back
        return chain

    class Forbid:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name.partition(".")[0] in forbidden:
                attempts.append({"module": name, "chain": import_chain()})
                raise ImportError(f"sans-IO check: {name} may not be imported here")
            return None

    real_import = builtins.__import__
    def hooked_import(name, globals=None, locals=None, fromlist=(), level=0):
        importer = (globals or {}).get("__name__") or "?"
        if level == 0 and name.partition(".")[0] in forbidden and ours(importer):
            own.append({"module": name, "importer": importer})
        return real_import(name, globals, locals, fromlist, level)

    real_import_module = importlib.import_module
    def hooked_import_module(name, package=None):
        importer = sys._getframe(1).f_globals.get("__name__") or "?"
        if not name.startswith(".") and name.partition(".")[0] in forbidden and ours(importer):
            own.append({"module": name, "importer": importer})
        return real_import_module(name, package)

    hook_codes.update(
        f.__code__ for f in (import_chain, Forbid.find_spec, hooked_import, hooked_import_module)
    )

    # The top-level package without its __init__ (see the test module's docstring).
    top = types.ModuleType(top_name)
    top.__path__ = [top_dir]
    top.__spec__ = importlib.machinery.ModuleSpec(top_name, None, is_package=True)
    top.__spec__.submodule_search_locations = [top_dir]
    sys.modules[top_name] = top

    sys.meta_path.insert(0, Forbid)
    builtins.__import__ = hooked_import
    importlib.import_module = hooked_import_module

    failures = {}
    def record_failure(name):
        failures[name] = traceback.format_exc()

    root = f"{top_name}.{subpackage}"
    imported = []
    try:
        package = importlib.import_module(root)
        imported.append(root)
        names = sorted(
            info.name
            for info in pkgutil.walk_packages(package.__path__, root + ".", onerror=record_failure)
        )
        for name in names:
            try:
                importlib.import_module(name)
                imported.append(name)
            except BaseException:
                record_failure(name)
    except BaseException:
        record_failure(root)

    loaded = sorted(
        m for m in sys.modules if m.partition(".")[0] in io_names and m not in preloaded
    )
    print(json.dumps({
        "preloaded": preloaded, "imported": imported, "failures": failures,
        "attempts": attempts, "own": own, "loaded_io": loaded,
    }))
    """
)


class Attempt(TypedDict):
    module: str
    chain: list[str]  # importing modules, innermost first


class OwnImport(TypedDict):
    module: str
    importer: str


class ImportReport(TypedDict):
    preloaded: list[str]  # forbidden modules already loaded at interpreter start
    imported: list[str]  # modules of the subpackage imported successfully
    failures: dict[str, str]  # module -> traceback
    attempts: list[Attempt]  # forbidden loads refused by the meta-path finder
    own: list[OwnImport]  # forbidden imports executed by the package's own code
    loaded_io: list[str]  # I/O modules present in sys.modules at the end


def run_import_check(top_dir: Path, subpackage: str = "protocol") -> ImportReport:
    """Import ``<top>.<subpackage>`` and all its submodules in a fresh interpreter."""
    proc = subprocess.run(
        [
            sys.executable,
            "-I",  # ignore PYTHON* variables and the user site; no cwd on sys.path
            "-c",
            CHILD,
            top_dir.name,
            str(top_dir),
            subpackage,
            ",".join(sorted(IO_MODULES)),
            ",".join(sorted(OWN_CODE_ONLY)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: ImportReport = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _module_names_on_disk(top_dir: Path, subpackage: str) -> set[str]:
    names: set[str] = set()
    for path in (top_dir / subpackage).rglob("*.py"):
        parts = path.relative_to(top_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.add(".".join(parts))
    return names


def test_protocol_imports_no_io_library() -> None:
    result = run_import_check(PACKAGE_DIR)
    # If the interpreter had already loaded an I/O module, the check below could prove nothing.
    assert not set(result["preloaded"]) & IO_MODULES
    assert result["failures"] == {}, "\n".join(result["failures"].values())
    # pkgutil found every module that is on disk, so nothing escaped the check.
    assert set(result["imported"]) == _module_names_on_disk(PACKAGE_DIR, "protocol")
    assert result["attempts"] == []
    assert result["own"] == []
    assert result["loaded_io"] == []


# The dynamic check itself must be able to fail: run it on a small package that misbehaves.


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")


def test_dynamic_check_detects_violations(tmp_path: Path) -> None:
    top = tmp_path / "fakepkg"
    # The top-level __init__ must not run (it may import the async layer).
    _write(top / "__init__.py", "raise RuntimeError('top-level __init__ executed')\n")
    _write(top / "protocol" / "__init__.py", "from . import clean\n")
    _write(top / "protocol" / "clean.py", "import struct\n")
    # Invisible to the static check: the module name is computed.
    _write(
        top / "protocol" / "dynamic.py",
        "import importlib\nimportlib.import_module('sock' + 'et')\n",
    )
    # ``time`` is already in sys.modules at start-up, so only the import hook can see this one.
    _write(top / "protocol" / "sub" / "__init__.py", "")
    _write(top / "protocol" / "sub" / "clock.py", "import time\n")
    # A third-party-like module (outside the package) pulling in an event loop library.
    _write(top / "protocol" / "indirect.py", "from .. import helper\n")
    _write(top / "helper.py", "import asyncio\n")

    result = run_import_check(top)

    failures = result["failures"]
    assert set(failures) == {"fakepkg.protocol.dynamic", "fakepkg.protocol.indirect"}
    assert "top-level __init__ executed" not in "".join(failures.values())
    assert set(result["imported"]) == {
        "fakepkg.protocol",
        "fakepkg.protocol.clean",
        "fakepkg.protocol.sub",
        "fakepkg.protocol.sub.clock",
    }
    attempts = {(a["module"], a["chain"][0]) for a in result["attempts"]}
    assert attempts == {("socket", "fakepkg.protocol.dynamic"), ("asyncio", "fakepkg.helper")}
    own = {(o["module"], o["importer"]) for o in result["own"]}
    assert own == {
        ("socket", "fakepkg.protocol.dynamic"),
        ("time", "fakepkg.protocol.sub.clock"),
        ("asyncio", "fakepkg.helper"),
    }
    assert result["loaded_io"] == []
