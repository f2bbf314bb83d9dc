"""The Python snippets of README.md and docs/getting-started.md work as written.

Each ```python block is compiled and checked for names it uses without defining or importing
them (a snippet copied into a file must run). Then each is run the way a reader would:

* the SCP snippet (``anyio.run(scp.serve, ...)``) is executed in this process, without that
  last line, and its ``scp`` serves on 127.0.0.1 for the duration of a test;
* the SCU snippets (``anyio.run(main)``) run as subprocesses against it, with the port number
  of the snippet replaced by the one it got, in a folder holding the file they send;
* the test snippet (``@pytest.mark.anyio``) runs under pytest in a subprocess.

A snippet of none of these kinds fails :func:`test_every_snippet_is_run`: give it a runner.
"""

from __future__ import annotations

import ast
import builtins
import os
import re
import shutil
import subprocess
import symtable
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pydicom
import pydicom.data
import pytest

from tests.harness.launch import python_script

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "docs" / "getting-started.md"]
CT_SMALL = Path(pydicom.data.__file__).parent / "test_files" / "CT_small.dcm"
#: the port every snippet uses, replaced by the port of the peer the test runs
SNIPPET_PORT = 11112
GUARD = 60.0
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


@dataclass(frozen=True)
class Snippet:
    document: Path
    number: int  # 1 for the document's first python block
    line: int  # of the opening fence
    source: str

    @property
    def name(self) -> str:
        return f"{self.document.relative_to(ROOT)}#{self.number}"

    @property
    def kind(self) -> str | None:
        if "@pytest.mark.anyio" in self.source:
            return "pytest"
        if "anyio.run(scp.serve" in self.source:
            return "scp"
        if "anyio.run(main" in self.source:
            return "scu"
        return None


def python_blocks(path: Path) -> Iterator[Snippet]:
    lines = path.read_text().splitlines()
    start: int | None = None
    count = 0
    for number, line in enumerate(lines, start=1):
        if start is None and line.strip() == "```python":
            start = number
        elif start is not None and line.strip() == "```":
            count += 1
            yield Snippet(path, count, start, "\n".join(lines[start : number - 1]) + "\n")
            start = None
    assert start is None, f"{path}:{start}: unclosed ```python block"


SNIPPETS = [snippet for document in DOCUMENTS for snippet in python_blocks(document)]


def of_kind(kind: str) -> list[Any]:
    return [pytest.param(s, id=s.name) for s in SNIPPETS if s.kind == kind]


def test_the_documents_have_snippets() -> None:
    assert {s.document for s in SNIPPETS} == set(DOCUMENTS)


@pytest.mark.parametrize("snippet", [pytest.param(s, id=s.name) for s in SNIPPETS])
def test_every_snippet_is_run(snippet: Snippet) -> None:
    assert snippet.kind is not None, f"{snippet.name}: no test runs this snippet"


# --------------------------------------------------------------------------- static checks


def undefined_names(source: str) -> set[str]:
    """Names a module uses that it never binds (assignment, import, def, parameter, ...) and
    that are not builtins: what raises NameError when the snippet runs on its own."""
    top = symtable.symtable(source, "<snippet>", "exec")
    bound_at_top = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    missing: set[str] = set()

    def visit(table: symtable.SymbolTable) -> None:
        for symbol in table.get_symbols():
            name = symbol.get_name()
            if not symbol.is_referenced() or hasattr(builtins, name):
                continue
            if table is top:
                if not (symbol.is_assigned() or symbol.is_imported()):
                    missing.add(name)
            elif symbol.is_global() and name not in bound_at_top:
                missing.add(name)
        for child in table.get_children():
            visit(child)

    visit(top)
    return missing


@pytest.mark.parametrize("snippet", [pytest.param(s, id=s.name) for s in SNIPPETS])
def test_snippet_compiles_and_defines_what_it_uses(snippet: Snippet) -> None:
    compile(snippet.source, snippet.name, "exec")
    assert undefined_names(snippet.source) == set(), (
        f"{snippet.name} (line {snippet.line}) uses names it does not import or define"
    )


def test_the_undefined_name_check_finds_missing_imports() -> None:
    assert undefined_names("scp = AE('X')\nanyio.run(scp.serve)\n") == {"AE", "anyio"}
    assert undefined_names("def f():\n    return uids.X\n") == {"uids"}
    assert undefined_names("import anyio\nfrom a import AE\nx = AE(anyio, len)\n") == set()


# --------------------------------------------------------------------------- running them


def without_serve_call(snippet: Snippet) -> str:
    """The SCP snippet without its final ``anyio.run(scp.serve, ...)`` statement."""
    tree = ast.parse(snippet.source)
    last = tree.body[-1]
    assert isinstance(last, ast.Expr) and ast.unparse(last.value).startswith(
        "anyio.run(scp.serve"
    ), f"{snippet.name}: expected to end with anyio.run(scp.serve, ...)"
    tree.body = tree.body[:-1]
    return ast.unparse(tree)


def with_port(snippet: Snippet, port: int) -> str:
    """The snippet with its port number replaced by ``port``."""
    source, count = re.subn(rf"\b{SNIPPET_PORT}\b", str(port), snippet.source)
    assert count == 1, f"{snippet.name}: expected {SNIPPET_PORT} once, found it {count} times"
    return source


def readme_scp() -> Any:
    """The ``scp`` the README's SCP snippet builds (executed here, not served yet)."""
    (snippet,) = [s for s in SNIPPETS if s.kind == "scp"]
    namespace: dict[str, Any] = {"__name__": "readme_scp"}
    exec(compile(without_serve_call(snippet), snippet.name, "exec"), namespace)
    return namespace["scp"]


def files_the_snippet_sends(snippet: Snippet, folder: Path) -> list[str]:
    """Copy a CT instance to every ``"*.dcm"`` name the snippet mentions."""
    names = sorted(set(re.findall(r'"([\w.-]+\.dcm)"', snippet.source)))
    for name in names:
        shutil.copyfile(CT_SMALL, folder / name)
    return names


@pytest.mark.anyio
@pytest.mark.parametrize("snippet", of_kind("scu"))
async def test_scu_snippet_against_the_readme_scp(
    snippet: Snippet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the SCP snippet saves to "incoming/", relative
    client = tmp_path / "client"
    client.mkdir()
    sent = files_the_snippet_sends(snippet, client)
    assert sent, f"{snippet.name} sends no file"
    uid = str(pydicom.dcmread(CT_SMALL, stop_before_pixels=True).SOPInstanceUID)
    scp = readme_scp()
    async with scp.server("127.0.0.1", 0) as server:
        script = client / "snippet.py"
        script.write_text(with_port(snippet, server.port))
        with anyio.fail_after(GUARD):
            result = await anyio.run_process(
                python_script(script), cwd=client, env=ENV, check=False
            )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert [p.name for p in (tmp_path / "incoming").iterdir()] == [f"{uid}.dcm"]
    if "print(await assoc.echo())" in snippet.source:
        assert "C-ECHO-RSP 0x0000" in output, output


def run_snippet_tests(folder: Path) -> subprocess.CompletedProcess[str]:
    """pytest on ``folder/test_snippet.py``, with none of this project's settings."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_snippet.py"],
        cwd=folder,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=GUARD,
    )


@pytest.mark.parametrize("snippet", of_kind("pytest"))
def test_test_snippet_passes_under_pytest(snippet: Snippet, tmp_path: Path) -> None:
    files_the_snippet_sends(snippet, tmp_path)
    (tmp_path / "test_snippet.py").write_text(snippet.source)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # none of this project's settings
    result = run_snippet_tests(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b[1-9]\d* passed\b", result.stdout), result.stdout


def test_the_test_snippet_can_fail(tmp_path: Path) -> None:
    """The pytest run above is not vacuous: the same test fails when the handler refuses
    the instance it is given (here: an instance without Patient ID)."""
    (snippet,) = [s for s in SNIPPETS if s.kind == "pytest"]
    ds = pydicom.dcmread(CT_SMALL)
    del ds.PatientID
    for name in files_the_snippet_sends(snippet, tmp_path):
        ds.save_as(tmp_path / name)
    (tmp_path / "test_snippet.py").write_text(snippet.source)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    result = run_snippet_tests(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"\b[1-9]\d* failed\b", result.stdout), result.stdout
    assert "passed" not in result.stdout, result.stdout
