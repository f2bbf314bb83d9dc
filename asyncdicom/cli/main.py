"""The ``asyncdicom`` command: echoscu, storescu, storescp and demo.

Exit status: 0 only on full success, 1 when an operation failed (rejected, aborted, a status
other than success/warning), 2 for usage errors.  Errors are one clear line on stderr; ``-v``
shows the protocol log (``-vv`` debug), ``--log-json`` makes it JSON.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import anyio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from .. import __version__
from ..errors import DICOMError
from ..log import configure_cli_logging
from . import demo, echoscu, storescp, storescu
from .common import CLIError, err

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``asyncdicom`` command."""
    parser = argparse.ArgumentParser(prog="asyncdicom", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"asyncdicom {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for app in (echoscu, storescu, storescp, demo):
        app.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``asyncdicom`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_cli_logging(verbose=args.verbose, json=args.log_json)
    try:
        return int(anyio.run(args.func, args, backend=args.backend))
    except KeyboardInterrupt:
        return 130
    except (CLIError, DICOMError, OSError, ValueError) as exc:
        err(str(exc))
        return 1
    except BaseExceptionGroup as group:
        first = _first_leaf(group)
        if isinstance(first, (CLIError, DICOMError, OSError, ValueError)):
            err(str(first))
            return 1
        raise


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


if __name__ == "__main__":
    sys.exit(main())
