"""The ``asyncdicom`` command: DICOM networking apps.

The apps: echoscu, storescu, storescp, findscu, getscu, movescu, qrscp, router, stgcmtscu, bench,
users and demo.

Exit status: 0 only on full success, 1 when an operation failed (rejected, aborted, a status
other than success/warning), 2 for usage errors, 130 after Ctrl-C.  Errors are one clear line
on stderr; ``-v`` shows the protocol log (``-vv`` debug), ``--log-json`` makes it JSON.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from .. import __version__
from ..errors import DICOMError
from ..log import configure_cli_logging, get_logger
from .apps import APPS
from .output import CLIError, UsageError, describe_error, err

__all__ = ["APPS", "build_parser", "main", "raise_open_file_limit"]

#: what ends an app with one error line and exit status 1 (anything else is a bug: traceback)
_EXPECTED = (CLIError, DICOMError, OSError, ValueError)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of the ``asyncdicom`` command.

    With ``only``, that app has its full parser and the others are listed by name and help
    line (what ``main`` uses: one app's module is imported, not eleven).
    """
    from .options import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="asyncdicom",
        description="DICOM networking apps, one sub-command each; 'asyncdicom SUBCOMMAND "
        "--help' lists the options of one.",
        epilog="Exit status: 0 on full success, 1 when an operation failed, 2 for a "
        "command-line error, 130 after Ctrl-C.",
    )
    parser.add_argument("--version", action="version", version=f"asyncdicom {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_line in APPS.items():
        if only is None or name == only:
            importlib.import_module(f"{__package__}.{name}").add_parser(sub)
        else:
            sub.add_parser(name, help=help_line)
    for command in sub.choices.values():
        # every app's --help shows the defaults (the apps' modules need not ask for it)
        command.formatter_class = HelpFormatter
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The app ``argv`` names (its first word that is not an option), if it is one."""
    for word in argv:
        if word == "--":
            return None
        if not word.startswith("-"):
            return word if word in APPS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``asyncdicom`` console script."""
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(only=_command(argv))
    args = parser.parse_args(argv)
    from .options import check_bind

    check_bind(_subparser(parser, args), args)
    configure_cli_logging(verbose=args.verbose, json=args.log_json)
    if args.verbose < 2:
        # pydicom's remarks on the values it decodes (an invalid UID in a peer's data set, ...)
        # are not the user's business in the apps; -vv shows them
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\b")
    raise_open_file_limit()
    import anyio

    try:
        return int(anyio.run(args.func, args, backend=args.backend))
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if interrupted(exc):
            return 130
        leaf = _first_leaf(exc)
        if isinstance(leaf, UsageError):
            err(str(leaf))
            return 2
        if isinstance(leaf, _EXPECTED):
            err(describe_error(leaf, args))
            return 1
        if isinstance(leaf, (SystemExit, GeneratorExit)):
            raise
        # a bug: the traceback goes through the log (a JSON object with --log-json)
        get_logger().error("internal_error", error=f"{type(leaf).__name__}: {leaf}", exc_info=leaf)
        return 1


#: the soft limit on open files asked for when the hard limit is "unlimited"
_UNLIMITED_TARGET = 1 << 16


def raise_open_file_limit() -> None:
    """Raise this process's soft limit on open files to its hard limit, as the Go runtime and
    the JVM do: a server holds one descriptor per connection, and the usual soft limit of
    1024 would turn a flood of a thousand idle connections into refused associations (the
    accept loop copes when the limit is reached, but cannot accept past it).  No-op where
    the limit cannot be read or changed."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = _UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        pass


def _subparser(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The sub-command's parser (its usage line goes with a usage error about its options)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found = action.choices.get(args.command)
            if isinstance(found, argparse.ArgumentParser):
                return found
    return parser


def interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` is, or a group holding anywhere, a ``KeyboardInterrupt``.

    Ctrl-C can land in one task while a sibling then fails on the torn-down connection; the
    group's first leaf is then that consequence, not the cause, and the exit is still 130."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(KeyboardInterrupt) is not None
    return isinstance(exc, KeyboardInterrupt)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


if __name__ == "__main__":
    sys.exit(main())
