"""A private PostgreSQL cluster for the tests: Debian's server binaries, a temporary folder, a
free port on 127.0.0.1 (its unix socket in the cluster's folder), one database per test.

PostgreSQL refuses to run as root: as root the cluster is initialised and run as ``nobody``
(so its folder is made in /tmp, which that user can reach: pytest's own temporary root is
private to root); as another user, as that user, under the given folder.  The server runs
without fsync (a test cluster: its data does not outlive the run).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["PostgresCluster", "find_postgres_bin", "missing_postgres"]

#: where to look for initdb and postgres: $ASYNCDICOM_PG_BIN, Debian's versioned folders, PATH
PG_BIN_ENV = "ASYNCDICOM_PG_BIN"


def find_postgres_bin() -> Path | None:
    """The folder holding PostgreSQL's ``initdb`` and ``postgres`` (the newest of Debian's
    versions), or None."""
    if where := os.environ.get(PG_BIN_ENV):
        return Path(where)
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True):
        if os.access(os.path.join(folder, "initdb"), os.X_OK):
            return Path(folder)
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _version(folder: str) -> int:
    try:
        return int(Path(folder).parent.name)
    except ValueError:
        return 0


def missing_postgres() -> str | None:
    """None when a cluster can be started here, else why not."""
    folder = find_postgres_bin()
    if folder is None:
        return f"no initdb under /usr/lib/postgresql/*/bin or on PATH (or set {PG_BIN_ENV})"
    for program in ("initdb", "postgres"):
        if not os.access(folder / program, os.X_OK):
            return f"no {program} in {folder}"
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        return f"cannot import psycopg ({exc}): pip install 'asyncdicom[postgresql]'"
    return None


def _parent_death_signal() -> Callable[[], None] | None:
    """A function for the server's process before it starts (Linux): a fast shutdown when the
    test process that started it dies without stopping it.  Resolved here, in the test process:
    the server's user may not read this interpreter's files."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # another system: the server outlives a killed test process

    def set_signal() -> None:
        prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG

    return set_signal


_DIE_WITH_PARENT = _parent_death_signal()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """One running cluster; :meth:`database` makes a new empty database and gives its URL."""

    def __init__(self, folder: Path | None = None) -> None:
        self.bin = find_postgres_bin()
        if self.bin is None:
            raise RuntimeError(missing_postgres() or "no PostgreSQL")
        as_root = os.geteuid() == 0
        self._user = pwd.getpwnam("nobody") if as_root else None
        if as_root or folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="asyncdicom-pg-"))
            self._own_folder = True
        else:
            self.folder = folder
            self.folder.mkdir(parents=True, exist_ok=True)
            self._own_folder = False
        self.data = self.folder / "data"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._count = 0
        self._lock = threading.Lock()
        self.log = self.folder / "postgres.log"

    def _run_as(self) -> dict[str, object]:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def start(self) -> None:
        """initdb, then start the server and wait until it accepts connections."""
        assert self.bin is not None
        if self._user is not None:
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)
        subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            cwd=self.folder,
            **self._run_as(),  # type: ignore[arg-type]
        )
        for _attempt in range(5):
            self.port = _free_port()
            if self._launch():
                return
        raise RuntimeError(f"PostgreSQL did not start: {self.log.read_text(errors='replace')}")

    def _launch(self) -> bool:
        assert self.bin is not None
        log = open(self.log, "ab")  # noqa: SIM115 (the server's stderr while it runs)
        proc = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.folder}",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "shared_buffers=32MB",
                "-c",
                "max_connections=200",
                "-c",
                "logging_collector=off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.folder,
            preexec_fn=_DIE_WITH_PARENT,
            **self._run_as(),  # type: ignore[arg-type]
        )
        assert proc.stderr is not None
        ready = False
        # the server says when it accepts connections (or why it stopped) on stderr
        for line in proc.stderr:
            log.write(line)
            log.flush()
            if b"ready to accept connections" in line:
                ready = True
                break
        if not ready:
            proc.wait()
            log.close()
            return False
        self._proc = proc

        def drain() -> None:
            assert proc.stderr is not None
            with log:
                for line in proc.stderr:
                    log.write(line)

        threading.Thread(target=drain, daemon=True).start()
        return True

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def database(self) -> str:
        """A new, empty database: its URL."""
        import psycopg

        with self._lock:
            self._count += 1
            name = f"t{os.getpid()}_{self._count}"
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name} TEMPLATE template0 STRATEGY FILE_COPY")
        return self.url(name)

    def drop(self, url: str) -> None:
        """Remove the database of ``url`` (its connections are ended)."""
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove the folder if it made it."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def running_cluster(folder: Path | None = None) -> Iterator[PostgresCluster]:
    """A started :class:`PostgresCluster`, stopped on exit."""
    cluster = PostgresCluster(folder)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
