"""Start-up: what ``import asyncdicom`` and a small command load (issue: start-up time).

Health checks and scripts call ``asyncdicom echoscu`` in a loop and pay its start-up each time;
the bulk of it was importing pydicom, structlog, trio, rich and every app before the command
line was even parsed.  These tests pin the modules that must stay out of a bare import and of
``echoscu`` (its ``--help`` and a run that fails to connect), each in a fresh interpreter.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap

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
