"""A private HAProxy for the tests: Debian's ``haproxy`` in the foreground (``-db``) as a child
process, balancing TCP connections over the given servers.

The listening socket is made here (127.0.0.1, a free port) and handed to HAProxy
(``bind fd@N``): it accepts connections from the moment :meth:`HAProxy.start` returns (they wait
in the backlog until HAProxy takes them), without a race for the port or a wait for the
program to say it listens.  :func:`haproxy_config` is the configuration, the one
docs/deployment.md shows.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

__all__ = ["HAProxy", "find_haproxy", "haproxy_config", "missing_haproxy", "running_haproxy"]

#: the haproxy executable to use instead of the one on PATH or in /usr/sbin
HAPROXY_ENV = "ASYNCDICOM_HAPROXY"


def find_haproxy() -> str | None:
    """The haproxy executable: $ASYNCDICOM_HAPROXY, PATH, or Debian's /usr/sbin/haproxy."""
    if where := os.environ.get(HAPROXY_ENV):
        return where
    found = shutil.which("haproxy")
    if found:
        return found
    return "/usr/sbin/haproxy" if os.access("/usr/sbin/haproxy", os.X_OK) else None


def missing_haproxy() -> str | None:
    """None when haproxy can be run here, else why not."""
    program = find_haproxy()
    if program is None:
        return f"no haproxy on PATH or in /usr/sbin (or set {HAPROXY_ENV})"
    if not os.access(program, os.X_OK):
        return f"{program} is not executable"
    return None


def haproxy_config(
    servers: Sequence[tuple[str, str, int]],
    *,
    bind: str = "127.0.0.1:11112",
    balance: str = "leastconn",
    check_interval: str = "1s",
    maxconn: int = 2000,
) -> str:
    """An haproxy.cfg balancing DICOM associations (TCP) over ``servers``, each
    ``(name, host, port)``: every server runs qrscp with the same AE title on the same storage
    and database.

    ``bind`` is what ``bind`` says (an address:port, or ``fd@N`` for an inherited socket).
    """
    lines = [
        "global",
        f"    maxconn {maxconn}",
        # one line per connection on standard error (under systemd: the journal)
        "    log stderr format raw local0 info",
        "",
        "defaults",
        "    log global",
        # DICOM is a TCP protocol of its own: HAProxy forwards bytes, it does not parse them
        "    mode tcp",
        "    option tcplog",
        # a refused connection (a node down) is tried again, the last try on another node
        "    option redispatch",
        "    retries 3",
        "    timeout connect 5s",
        # an idle association is the peers' business (ARTIM, DIMSE timeouts): the balancer
        # must not end it before they do
        "    timeout client 1h",
        "    timeout server 1h",
        # a peer that closed its side: the other half is closed soon after
        "    timeout client-fin 30s",
        "    timeout server-fin 30s",
        "",
        "frontend dicom",
        f"    bind {bind}",
        f"    maxconn {maxconn}",
        "    default_backend qrscp",
        "",
        "backend qrscp",
        f"    balance {balance}",
        # a TCP connect check: a node is taken out after 2 failed checks, back after 1 success
        f"    default-server check inter {check_interval} fall 2 rise 1 on-marked-down "
        "shutdown-sessions",
    ]
    lines.extend(f"    server {name} {host}:{port}" for name, host, port in servers)
    return "\n".join(lines) + "\n"


class HAProxy:
    """One running haproxy in front of ``servers`` (``(name, host, port)``); ``port`` is where
    it listens on 127.0.0.1 once started."""

    def __init__(
        self, servers: Sequence[tuple[str, str, int]], folder: Path, *, balance: str = "leastconn"
    ) -> None:
        program = find_haproxy()
        if program is None:
            raise RuntimeError(missing_haproxy() or "no haproxy")
        self.program = program
        self.servers = list(servers)
        self.folder = folder
        self.balance = balance
        self.config = folder / "haproxy.cfg"
        self.log = folder / "haproxy.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Write the configuration, check it (``haproxy -c``) and start haproxy."""
        self.folder.mkdir(parents=True, exist_ok=True)
        listener = socket.socket()
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            self.port = int(listener.getsockname()[1])
            fd = listener.fileno()
            text = haproxy_config(self.servers, bind=f"fd@{fd}", balance=self.balance)
            self.config.write_text(text)
            checked = subprocess.run(
                [self.program, "-c", "-q", "-f", str(self.config)],
                capture_output=True,
                text=True,
                pass_fds=(fd,),
                check=False,
            )
            if checked.returncode != 0:
                raise RuntimeError(f"haproxy -c refused {self.config}: {checked.stderr}")
            with open(self.log, "ab") as log:
                self._proc = subprocess.Popen(
                    [self.program, "-f", str(self.config), "-db"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(fd,),
                )
        finally:
            listener.close()  # haproxy holds its own descriptor of the socket

    def stop(self) -> None:
        """Stop haproxy (SIGTERM: a hard stop, open connections are closed)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


@contextmanager
def running_haproxy(
    servers: Sequence[tuple[str, str, int]], folder: Path, *, balance: str = "leastconn"
) -> Iterator[HAProxy]:
    """A started :class:`HAProxy`, stopped on exit."""
    proxy = HAProxy(servers, folder, balance=balance)
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()
