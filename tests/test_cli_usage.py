"""Command-line errors of the apps: exit status 2 and one line naming the problem, found before
anything is sent or created (``asyncdicom.cli.main.main`` in this process: a usage error ends
it before its event loop starts)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from asyncdicom.cli.main import main
from tests import test_tls as tls_tests
from tests.test_tls import PKI

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

#: the test CA and certificates of tests/test_tls.py (a module-scoped fixture)
pki = tls_tests.pki

#: an address that is not this machine's (TEST-NET-1, RFC 5737): a server app that took its
#: options would stop at once, unable to listen, rather than serve
NOT_LOCAL = "192.0.2.1"

#: the apps that take query keys (-k), with the options they need besides
KEY_APPS = {
    "findscu": ["findscu", "127.0.0.1", "104", "--level", "STUDY"],
    "getscu": ["getscu", "127.0.0.1", "104", "--level", "STUDY"],
    "movescu": ["movescu", "127.0.0.1", "104", "--level", "STUDY", "--move-dest", "X"],
    "bench": [
        "bench",
        "127.0.0.1",
        "104",
        "--called-aet",
        "X",
        "--operation",
        "find",
        "--count",
        "1",
    ],
}


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``asyncdicom ARGV``, expecting a command-line error; its standard error."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 2, capsys.readouterr()
    text = capsys.readouterr().err
    assert "Traceback" not in text
    return text


@pytest.mark.parametrize("app", sorted(KEY_APPS))
@pytest.mark.parametrize("key", ["", "=", "=x", " =1.2.3"])
def test_an_empty_key_is_named(capsys: pytest.CaptureFixture[str], app: str, key: str) -> None:
    """An empty key was taken for an unrelated tag, (300A,0782), and sent."""
    text = usage_error(capsys, *KEY_APPS[app], "-k", key)
    assert "argument -k/--key: empty key" in text, text


@pytest.mark.parametrize("app", sorted(KEY_APPS))
@pytest.mark.parametrize(
    ("key", "vr"),
    [
        ("NumberOfStudyRelatedInstances=abc", "IS"),
        ("SeriesNumber=x", "IS"),
        ("SeriesNumber=1.5", "IS"),
        ("SeriesNumber=1\\x", "IS"),
        ("SliceThickness=thin", "DS"),
        ("SliceThickness=nan", "DS"),
    ],
)
def test_a_number_string_key_that_is_no_number_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], app: str, key: str, vr: str
) -> None:
    """IS and DS values are numbers written as text (PS3.5 6.2): a value that is none was
    "could not convert string to float", exit 1, once the app ran."""
    text = usage_error(capsys, *KEY_APPS[app], "-k", key)
    keyword, _, value = key.partition("=")
    assert f"argument -k/--key: {keyword}='{value}': not a number for VR {vr}" in text, text


def test_number_string_keys_are_sent_as_typed() -> None:
    from asyncdicom.cli.findscu import parse_key

    assert parse_key("SeriesNumber=12") == (0x00200011, "IS", "12")
    assert parse_key("SeriesNumber=1\\2") == (0x00200011, "IS", "1\\2")
    assert parse_key("SliceThickness=2.5e0") == (0x00180050, "DS", "2.5e0")
    assert parse_key("SeriesNumber") == (0x00200011, "IS", None)


@pytest.mark.parametrize("app", ["echoscu", "storescp", "movescu-dest"])
def test_an_ae_title_with_a_backslash_is_shown_as_typed(
    capsys: pytest.CaptureFixture[str], app: str
) -> None:
    """``--aet 'A\\B'`` was echoed in Python's escaped form, 'A\\\\B'."""
    argv = {
        "echoscu": ["echoscu", "127.0.0.1", "104", "--aet", "A\\B"],
        "storescp": ["storescp", "--port", "0", "--host", NOT_LOCAL, "--ignore", "--aet", "A\\B"],
        "movescu-dest": ["movescu", "127.0.0.1", "104", "--level", "STUDY", "--move-dest", "A\\B"],
    }[app]
    text = usage_error(capsys, *argv)
    assert ": 'A\\B': an AE title has only ISO 646" in text, text


@pytest.mark.parametrize("app", ["storescp", "qrscp"])
@pytest.mark.parametrize(
    ("option", "shown"),
    [
        (["--require-passcode"], "--require-passcode"),
        (["--lockout-after", "3"], "--lockout-after"),
        (["--lockout-after", "5"], "--lockout-after"),  # the default value, given all the same
        (["--lockout-time", "10"], "--lockout-time"),
    ],
)
def test_users_options_without_users_are_usage_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, app: str, option: list[str], shown: str
) -> None:
    """They were accepted and ignored without --users."""
    where = ["--ignore"] if app == "storescp" else ["--storage", str(tmp_path / "archive")]
    text = usage_error(capsys, app, "--port", "0", "--host", NOT_LOCAL, *where, *option)
    assert f"argument {shown}: needs --users" in text, text
    assert not (tmp_path / "archive").exists()


@pytest.mark.parametrize("app", ["storescp", "qrscp", "echoscu"])
def test_a_certificate_without_its_key_names_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pki: PKI, app: str
) -> None:
    """A --tls-cert file without a private key gave "[SSL] PEM lib (_ssl.c:3926)"."""
    argv = {
        "storescp": ["storescp", "--port", "0", "--host", NOT_LOCAL, "--ignore"],
        "qrscp": [
            "qrscp",
            "--port",
            "0",
            "--host",
            NOT_LOCAL,
            "--storage",
            str(tmp_path / "archive"),
        ],
        "echoscu": ["echoscu", "127.0.0.1", "104"],
    }[app]
    text = usage_error(capsys, *argv, "--tls-cert", str(pki.server_cert))
    assert f"argument --tls-cert: no private key in {pki.server_cert}; give --tls-key" in text
    text = usage_error(capsys, *argv, "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.ca))
    assert f"argument --tls-key: no private key in {pki.ca}" in text, text
    assert not (tmp_path / "archive").exists()


def test_top_level_help_has_no_markup(capsys: pytest.CaptureFixture[str]) -> None:
    """``asyncdicom --help`` printed the docstring's reST markup ("``asyncdicom``")."""
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "``" not in text and ":func:" not in text
    assert "DICOM networking apps" in text
    for app in ("echoscu", "storescp", "qrscp", "bench", "users", "demo"):
        assert app in text


def test_ctrl_c_anywhere_in_a_group_is_an_interrupt() -> None:
    """Ctrl-C in one task, a sibling failing on the torn-down connection: the group's first
    leaf is the consequence, and the exit must still be 130 (no internal-error traceback)."""
    import anyio

    from asyncdicom.cli.main import interrupted

    assert interrupted(KeyboardInterrupt())
    consequence = anyio.ClosedResourceError()
    assert interrupted(BaseExceptionGroup("", [consequence, KeyboardInterrupt()]))
    nested = BaseExceptionGroup("", [consequence, BaseExceptionGroup("", [KeyboardInterrupt()])])
    assert interrupted(nested)
    assert not interrupted(ExceptionGroup("", [consequence]))
    assert not interrupted(consequence)
