"""Our apps as servers for the benchmark scripts: ``python -m asyncdicom ARGS`` in its own
process, run from a source tree, found listening by its ``listening on HOST:PORT`` notice, its
output read all along (a full pipe would stall it) and stopped with a signal.

Shared by ``bench_ingest.py`` (qrscp), ``bench_nagle.py`` (storescp, qrscp) and
``bench_router.py`` (storescp, router).  Give the app ``--port 0`` to have it choose a free
port, which it then reports (or a port of your own, which it reports likewise).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ROOT", "App", "running_app", "start_app", "stop_app"]

#: the source tree these scripts belong to
ROOT = Path(__file__).resolve().parents[2]

_LISTENING = re.compile(rb" listening on \S+:(\d+)")


@dataclass
class App:
    """A started app: its process and the port it listens on."""

    proc: subprocess.Popen[bytes]
    port: int
    command: list[str]

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_app(
    args: Sequence[str], *, tree: Path = ROOT, cwd: Path | None = None, timeout: float = 30.0
) -> App:
    """``python -m asyncdicom ARGS`` run from ``tree`` (put first on ``PYTHONPATH``), in
    ``cwd``, once it says it listens (within ``timeout`` s).  Its standard output and error go
    to one pipe that a thread keeps reading.  Raises ``RuntimeError`` with what the app said
    when it exits first or does not say it in time."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    command = [sys.executable, "-m", "asyncdicom", *args]
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
    )
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{' '.join(command)} exited: {seen.decode(errors='replace')}")
            seen += line
            found = _LISTENING.search(line)
            if found:
                # keep reading what it prints: a full pipe would stop the server
                threading.Thread(target=proc.stdout.read, daemon=True).start()
                return App(proc, int(found.group(1)), command)
        raise RuntimeError(
            f"{' '.join(command)} did not start in {timeout:g} s: {seen.decode(errors='replace')}"
        )
    except BaseException:
        stop_app(proc, timeout=5.0)
        raise


def stop_app(
    app: App | subprocess.Popen[bytes], *, sig: int = signal.SIGINT, timeout: float = 20.0
) -> None:
    """Send ``sig`` to the app (unless it has ended) and wait up to ``timeout`` s for it to
    exit; then kill it."""
    proc = app.proc if isinstance(app, App) else app
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def running_app(
    args: Sequence[str],
    *,
    tree: Path = ROOT,
    cwd: Path | None = None,
    timeout: float = 30.0,
    stop_signal: int = signal.SIGINT,
    stop_timeout: float = 20.0,
) -> Iterator[App]:
    """:func:`start_app` for the ``with`` block, then :func:`stop_app`."""
    app = start_app(args, tree=tree, cwd=cwd, timeout=timeout)
    try:
        yield app
    finally:
        stop_app(app, sig=stop_signal, timeout=stop_timeout)
