"""``asyncdicom ARGS`` run in this process, for command-line errors.

A usage error (exit status 2) is found before an app sends or creates anything: argparse's
checks, ``check_bind``, and the apps' own option checks.  Running ``asyncdicom.cli.main.main``
here gives the same exit status and the same standard output and error as a subprocess would,
without starting an interpreter for each case.  What ``main`` changes in the process (the
``asyncdicom`` logger's handlers and level, warning filters, the working folder, ``COLUMNS``)
is restored.

Tests of what a real process does (signals, exit on Ctrl-C, a server's life) keep running the
command as a subprocess.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import warnings
from pathlib import Path
from subprocess import CompletedProcess

import anyio

from asyncdicom.cli.main import main


def run_main(*args: str, cwd: Path) -> CompletedProcess[bytes]:
    """Run ``asyncdicom ARGS`` in this process, in folder ``cwd``; its exit status and output
    (bytes, as :func:`subprocess.run` returns them)."""
    out, err = io.StringIO(), io.StringIO()
    logger = logging.getLogger("asyncdicom")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    before = Path.cwd()
    columns = os.environ.get("COLUMNS")
    try:
        os.chdir(cwd)
        os.environ["COLUMNS"] = "200"  # wide help, as the subprocess tests ask for
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1 if exc.code else 0
    finally:
        os.chdir(before)
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]
    return CompletedProcess(
        ["asyncdicom", *args], code, out.getvalue().encode(), err.getvalue().encode()
    )


async def run_main_async(*args: str, cwd: Path) -> CompletedProcess[bytes]:
    """:func:`run_main` from async code: in a worker thread, where the app's own event loop
    can run (the app's backend is its ``--backend`` option, asyncio by default)."""
    return await anyio.to_thread.run_sync(functools.partial(run_main, *args, cwd=cwd))
