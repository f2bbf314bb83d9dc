"""A pre-imported ``python -m asyncdicom`` (and ``python SCRIPT``) for the tests: one per
pytest process.

Hundreds of tests run an app (storescp, qrscp, echoscu...) as a subprocess.  Each fresh
interpreter spent 0.3-0.8 s of CPU importing asyncdicom, pydicom, numpy, anyio, trio and rich
before reading its command line: on the 2-core machine about 40% of the test suite's CPU.  This
server imports all of that once and forks a child per app run; :mod:`tests.harness.appshim` is
the command the tests start instead of ``python -m asyncdicom``.

The child is a real process: it runs ``asyncdicom/__main__.py`` (as ``-m`` does) with the
shim's standard input, output and error, its working folder, environment and arguments; it
receives the signals the shim receives (the shim forwards them); its exit status becomes the
shim's (a death by signal included).  What differs from a fresh interpreter: modules are
imported before the environment is the child's (nothing in asyncdicom reads the environment at
import), and the interpreter's start-up settings are the server's.  The shim therefore uses a
fresh interpreter whenever a ``PYTHON*`` variable of its environment differs from the server's.

A shim killed with SIGKILL cannot forward it: the server sees its connection close and kills the
child the same way.  Tests that SIGKILL an app and then look at what it left, or that need the
app's own pid, run the real ``python -m asyncdicom`` (``REAL_CLI`` in tests/test_cli.py).

The same serves ``python SCRIPT ARGS`` for the tests' Python programs (the examples, the
pynetdicom peers of tests/harness): ``appshim.py --script SCRIPT ARGS``.

Protocol on the Unix socket (the shim's side is in appshim.py): the shim sends one JSON line
{"argv", "cwd", "env", "script"} with its file descriptors 0, 1 and 2 attached; the server answers
``pid <n>\\n`` (or ``fallback\\n``), then ``status <wait status>\\n`` when the child ends.

Run as ``python appserver.py FD`` with the listening socket as file descriptor FD and a pipe
from the pytest process as standard input: the server ends when that pipe closes.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import runpy
import selectors
import signal
import socket
import sys
import traceback

# Start-up settings a fresh interpreter would take from these: a request whose values differ
# runs a fresh interpreter instead.
_STARTUP_ENV = ("PYTHON",)


def _preload() -> None:
    """Import what the apps import, before any fork (so each child starts with it)."""
    import importlib
    import pkgutil

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # no thread pool in a forking process
    import asyncdicom.cli
    from asyncdicom.cli.apps import APPS

    for name in APPS:
        importlib.import_module(f"asyncdicom.cli.{name}")
    for module in pkgutil.iter_modules(asyncdicom.cli.__path__, "asyncdicom.cli."):
        importlib.import_module(module.name)
    for name in (
        "asyncdicom.cli.main",
        "asyncdicom.archive",
        "asyncdicom.storage.transcoding",
        "pydicom",
        "anyio._backends._asyncio",
        "anyio._backends._trio",
        "trio",
        "rich.console",
        "rich.progress",
        "rich.table",
        "sqlite3",
        "ssl",
        "multiprocessing.spawn",
        "pynetdicom",  # the Python peers of tests/harness (when installed)
    ):
        with contextlib.suppress(ImportError):  # an optional extra that is not installed
            importlib.import_module(name)


def _startup_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(_STARTUP_ENV)}


def _stdio(env: dict[str, str]) -> None:
    """Standard streams on descriptors 0, 1 and 2, as a fresh interpreter opens them."""
    unbuffered = bool(env.get("PYTHONUNBUFFERED"))
    encoding = sys.stdout.encoding if sys.stdout else "utf-8"

    def text(fd: int, mode: str, errors: str) -> io.TextIOWrapper:
        raw = io.FileIO(fd, mode, closefd=False)
        interactive = raw.isatty()
        buffer: io.BufferedIOBase = (
            io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
        )
        return io.TextIOWrapper(
            buffer,
            encoding=encoding,
            errors=errors,
            line_buffering=interactive or (mode == "w" and fd == 2),
            write_through=unbuffered and mode == "w",
        )

    sys.stdin = sys.__stdin__ = text(0, "r", "strict")
    sys.stdout = sys.__stdout__ = text(1, "w", "strict")
    sys.stderr = sys.__stderr__ = text(2, "w", "backslashreplace")


def _child(request: dict[str, object], fds: list[int]) -> None:
    """In the forked child: become ``python -m asyncdicom ARGS``; never returns."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        env = dict(request["env"])  # type: ignore[call-overload]
        os.environ.clear()
        os.environ.update(env)
        os.chdir(str(request["cwd"]))
        script = request.get("script")
        _stdio(env)
        try:
            if script:  # ``python SCRIPT ARGS``
                script = os.path.abspath(str(script))
                sys.path[0] = os.path.dirname(os.path.realpath(script))
                sys.argv = [script, *request["argv"]]  # type: ignore[misc]
                runpy.run_path(script, run_name="__main__")
            else:  # ``python -m asyncdicom ARGS``
                sys.path[0] = os.getcwd()  # what ``-m`` puts first
                sys.argv = ["-m", *request["argv"]]  # type: ignore[misc]
                runpy.run_module("asyncdicom", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exit_:
            if exit_.code is None:
                code = 0
            elif isinstance(exit_.code, int):
                code = exit_.code
            else:
                print(exit_.code, file=sys.stderr)
                code = 1
        except KeyboardInterrupt:
            traceback.print_exc()
            _flush()
            atexit._run_exitfuncs()
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)  # as a fresh interpreter dies of Ctrl-C
        except BaseException:
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
        _flush()
    finally:
        os._exit(code & 0xFF)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _receive(conn: socket.socket) -> tuple[dict[str, object], list[int]] | None:
    data = b""
    fds: list[int] = []
    while not data.endswith(b"\n"):
        chunk, got, _flags, _addr = socket.recv_fds(conn, 1 << 20, 8)
        fds += got
        if not chunk:
            for fd in fds:
                os.close(fd)
            return None
        data += chunk
    return json.loads(data), fds


def serve(listener: socket.socket) -> None:
    own_startup = _startup_env(dict(os.environ))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, ("listen", None))
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, ("parent", None))
    children: dict[int, tuple[socket.socket, int]] = {}  # pid -> (connection, pidfd)
    while True:
        for key, _events in selector.select():
            kind, value = key.data
            if kind == "parent":
                if not os.read(sys.stdin.fileno(), 4096):  # pytest has ended
                    for pid in children:
                        _kill(pid)
                    return
            elif kind == "listen":
                conn, _ = listener.accept()
                received = _receive(conn)
                if received is None:
                    conn.close()
                    continue
                request, fds = received
                env = dict(request["env"])  # type: ignore[call-overload]
                if len(fds) != 3 or _startup_env(env) != own_startup:
                    for fd in fds:
                        os.close(fd)
                    conn.sendall(b"fallback\n")
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    _child(request, fds)
                for fd in fds:
                    os.close(fd)
                pidfd = os.pidfd_open(pid)
                children[pid] = (conn, pidfd)
                conn.sendall(b"pid %d\n" % pid)
                selector.register(pidfd, selectors.EVENT_READ, ("child", pid))
                selector.register(conn, selectors.EVENT_READ, ("shim", pid))
            elif kind == "child":
                conn, pidfd = children.pop(value)
                _, status = os.waitpid(value, 0)
                selector.unregister(pidfd)
                os.close(pidfd)
                if conn.fileno() in selector.get_map():
                    selector.unregister(conn)
                with contextlib.suppress(OSError):
                    conn.sendall(b"status %d\n" % status)
                conn.close()
            elif kind == "shim":
                conn = key.fileobj  # type: ignore[assignment]
                try:
                    alive = conn.recv(1)
                except OSError:
                    alive = b""
                if not alive:  # the shim died (SIGKILL): so does its app
                    _kill(value)
                    selector.unregister(conn)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def main() -> None:
    listener = socket.socket(fileno=int(sys.argv[1]))
    _preload()
    serve(listener)


if __name__ == "__main__":
    main()
