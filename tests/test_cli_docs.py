"""docs/cli.md and the commands' parsers agree.

For each sub-command, the options (and positional arguments) that ``build_parser()`` knows are
exactly the ones documented in docs/cli.md, a documented default matches the parser's, every
option has a help text, and the exit statuses the docs list are the ones the apps use.

The documentation format (described in a comment at the top of docs/cli.md): option tables
whose first column holds each option in backticks; a ``## <sub-command>`` section holds that
command's options, a section whose title ends with ``(a, b)`` the options commands ``a`` and
``b`` share, and the section titled "... every application" those of every command.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from asyncdicom.cli.main import build_parser

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


@dataclass(frozen=True)
class DocRow:
    section: str
    names: tuple[str, ...]
    default: str | None  # the "Default" cell, None when the table has no such column


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    """Sub-command -> its parser; a sub-command's own sub-command (``bench merge``, whose
    parser is the ``merge_parser`` of ``bench``'s) under its two words."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands = dict(action.choices)
            for name, sub in list(commands.items()):
                nested = getattr(sub, "merge_parser", None)
                if isinstance(nested, argparse.ArgumentParser):
                    commands[f"{name} merge"] = nested
            return commands
    raise AssertionError("the asyncdicom parser has no sub-commands")


COMMANDS = _subcommands()


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _names(cell: str) -> tuple[str, ...]:
    """``-v``, ``--verbose`` -> ('-v', '--verbose'); ``PATH...`` -> ('PATH',)."""
    names = []
    for token in re.findall(r"`([^`]+)`", cell):
        name = token.split()[0]
        if name.startswith("-"):
            names.append(name)
        elif re.fullmatch(r"[A-Z][A-Z0-9_]*(\.\.\.)?", name):
            names.append(name.removesuffix("..."))
    return tuple(names)


def _doc_sections(text: str) -> dict[str, list[DocRow]]:
    """Section title -> the rows of its option tables."""
    sections: dict[str, list[DocRow]] = {}
    title = ""
    header: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
            sections.setdefault(title, [])
            header = None
            continue
        if not line.startswith("|"):
            header = None
            continue
        cells = _cells(line)
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if set(line.replace("|", "").strip()) <= {"-", ":", " "}:
            continue  # the separator row
        names = _names(cells[0])
        if not names or not title:
            continue
        default = cells[header.index("default")] if "default" in header else None
        sections[title].append(DocRow(title, names, default))
    return sections


def _section_commands(title: str) -> list[str]:
    if title in COMMANDS:
        return [title]
    if "every application" in title:
        return list(COMMANDS)
    shared = re.search(r"\(([^)]*)\)\s*$", title)
    if shared:
        return [name.strip() for name in shared.group(1).split(",")]
    return []


def _documented() -> dict[str, list[DocRow]]:
    """Sub-command -> the documented rows that apply to it."""
    rows: dict[str, list[DocRow]] = {name: [] for name in COMMANDS}
    for title, section_rows in _doc_sections(DOC.read_text()).items():
        commands = _section_commands(title)
        if section_rows:
            assert commands, f"docs/cli.md section {title!r} has options but names no command"
        for command in commands:
            assert command in COMMANDS, f"docs/cli.md section {title!r}: no command {command!r}"
            rows[command].extend(section_rows)
    return rows


def _parser_names(action: argparse.Action) -> tuple[str, ...]:
    if action.option_strings:
        return tuple(action.option_strings)
    metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    return (metavar,)


def _actions(command: str) -> list[argparse.Action]:
    return [
        a
        for a in COMMANDS[command]._actions
        if not isinstance(a, argparse._HelpAction) and a.dest != argparse.SUPPRESS
    ]


DOCUMENTED = _documented()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_documented_options_are_the_parsers(command: str) -> None:
    in_parser = {name for action in _actions(command) for name in _parser_names(action)}
    in_docs = [name for row in DOCUMENTED[command] for name in row.names]
    assert len(in_docs) == len(set(in_docs)), f"{command}: documented twice: {in_docs}"
    assert sorted(in_parser - set(in_docs)) == [], f"{command}: options missing in docs/cli.md"
    assert sorted(set(in_docs) - in_parser) == [], f"{command}: docs/cli.md lists unknown options"


def _matches(cell: str, action: argparse.Action) -> bool:
    literal = re.fullmatch(r"`([^`]*)`", cell)
    default = action.default
    if literal:
        value = literal.group(1)
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            try:
                return float(value) == float(default)
            except ValueError:
                return False
        return value == default
    if cell == "(required)":
        return action.required
    # "", "any", "none": no value (the option is off, or the library decides)
    return cell.lower() in ("", "any", "none") and default in (None, False) and not action.required


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_documented_defaults_are_the_parsers(command: str) -> None:
    by_name = {name: action for action in _actions(command) for name in _parser_names(action)}
    wrong = []
    for row in DOCUMENTED[command]:
        action = by_name.get(row.names[0])
        if row.default is None or action is None or not action.option_strings:
            continue
        if not _matches(row.default, action):
            wrong.append(f"{row.names[0]}: docs {row.default!r}, parser {action.default!r}")
    assert wrong == [], f"{command}: defaults in docs/cli.md differ from the parser"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_has_help_text(command: str) -> None:
    missing = [_parser_names(a)[0] for a in _actions(command) if not (a.help or "").strip()]
    assert missing == [], f"{command}: options without help text"


def test_docs_exit_statuses_are_the_apps() -> None:
    """The exit statuses docs/cli.md lists are 0, 1, 2 and 130 (tests/test_cli.py checks each
    one against the apps: success, a failed operation, a usage error, Ctrl-C)."""
    text = DOC.read_text()
    bullet = re.search(r"\* \*\*Exit status\*\*:(.*?)(?=\n\* |\n\n)", text, re.S)
    assert bullet, "docs/cli.md has no 'Exit status' convention"
    assert set(re.findall(r"`(\d+)`", bullet.group(1))) == {"0", "1", "2", "130"}


def test_the_checker_sees_a_difference() -> None:
    """The parsing above notices an undocumented and a removed option."""
    rows = _doc_sections(
        "## echoscu\n\n| Option | Default | Meaning |\n|---|---|---|\n"
        "| `--repeat N` | `1` | x |\n| `--gone` | | y |\n"
    )["echoscu"]
    assert [r.names for r in rows] == [("--repeat",), ("--gone",)]
    assert [r.default for r in rows] == ["`1`", ""]
    assert _section_commands("Options shared by the SCUs (echoscu, storescu)") == [
        "echoscu",
        "storescu",
    ]
    assert _names("`-v`, `--verbose`") == ("-v", "--verbose")
    assert _names("`PATH...`") == ("PATH",)


def test_the_command_list_names_every_command() -> None:
    """The console block at the top of docs/cli.md lists one line per sub-command (it left out
    ``users``)."""
    text = DOC.read_text(encoding="utf-8")
    block = text.split("```console", 1)[1].split("```", 1)[0]
    listed = re.findall(r"^\$ asyncdicom (\S+(?: merge)?)", block, flags=re.MULTILINE)
    assert sorted(listed) == sorted(COMMANDS)
