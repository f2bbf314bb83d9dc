"""``python -S appshim.py ARGS``: ``python -m asyncdicom ARGS`` run by the tests' app server;
``python -S appshim.py --script SCRIPT ARGS``: ``python SCRIPT ARGS`` run by it.

See :mod:`tests.harness.appserver`.  The shim hands its standard streams, working folder,
environment and arguments to the server (whose socket is named by ASYNCDICOM_TEST_APPSERVER),
forwards the signals it receives to the app, and ends as the app ended (exit status or signal).
Without a server, or when the server says the environment needs a fresh interpreter, it becomes
``python -m asyncdicom ARGS`` (exec).  Started with ``-S``: nothing but the standard library.
"""

import contextlib
import json
import os
import signal
import socket
import sys

SOCKET_ENV = "ASYNCDICOM_TEST_APPSERVER"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)  # fmt: skip


SCRIPT = sys.argv[2] if len(sys.argv) > 2 and sys.argv[1] == "--script" else None
ARGS = sys.argv[3:] if SCRIPT else sys.argv[1:]


def fresh() -> None:
    if SCRIPT:
        os.execv(sys.executable, [sys.executable, SCRIPT, *ARGS])
    os.execv(sys.executable, [sys.executable, "-m", "asyncdicom", *ARGS])


def main() -> None:
    path = os.environ.get(SOCKET_ENV)
    if not path:
        fresh()
    pid = 0
    pending: list[int] = []

    def forward(sig: int, _frame: object) -> None:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        else:
            pending.append(sig)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        fresh()
    request = {"argv": ARGS, "cwd": os.getcwd(), "env": dict(os.environ), "script": SCRIPT}
    socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
    reader = conn.makefile("rb")
    first = reader.readline().split()
    if not first or first[0] != b"pid":
        fresh()
    pid = int(first[1])
    for sig in pending:
        forward(sig, None)
    line = reader.readline().split()
    if not line:  # the server went away
        os._exit(1)
    status = int(line[1])
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status))


main()
