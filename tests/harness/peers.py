"""Start real DICOM peers (DCMTK, pynetdicom) on the loopback interface.

This harness is deliberately independent of asyncdicom's own networking: it drives external
programs through :mod:`subprocess`, so interop tests and benchmarks can compare asyncdicom with
other implementations without trusting any asyncdicom code on the other side of the wire.

Everything here is synchronous. From async code (anyio tests) run the blocking helpers with
``anyio.to_thread.run_sync`` or run the argument lists built by :func:`echoscu_command` /
:func:`storescu_command` with ``anyio.run_process``.

Readiness:

* :class:`PynetdicomSCP` prints ``READY <port>`` once it listens; the harness waits for that line
  (a real signal, no polling). It binds port 0 by default and reports the port it got, so there
  is no race for a free port.
* DCMTK ``storescp`` prints nothing when it starts listening (checked with ``-d`` on 3.6.7), so
  :class:`DcmtkStoreSCP` polls with :func:`wait_for_port` (bounded retries with backoff). The
  probe connection is closed at once; storescp logs it as an association that ended before an
  A-ASSOCIATE-RQ and keeps serving.

Nagle's algorithm: DCMTK reads the environment variable ``TCP_NODELAY``; the Debian 12 build
(3.6.7) leaves Nagle's algorithm on when it is unset, and every request/response round trip on
loopback then stalls for a delayed ACK (measured: 200 C-ECHO on one association took 17.7 s
between echoscu and storescp, 0.07 s with ``TCP_NODELAY=1`` on both). Every DCMTK process
started here therefore gets ``TCP_NODELAY=1`` unless ``tcp_nodelay=False`` (see
:func:`dcmtk_env`; use it with ``anyio.run_process(..., env=dcmtk_env())`` too).

DCMTK 3.6.7 ``storescp`` has no option to choose the listening address: it listens on all
interfaces (``0.0.0.0``). The harness only ever connects to ``127.0.0.1``; the port is an
ephemeral one chosen by :func:`free_port`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from .launch import python_script

__all__ = [
    "DCMTK_BIN_ENV",
    "DCMTK_MAX_PDU_RANGE",
    "DCMTK_PROGRAMS",
    "LOCALHOST",
    "ODIL_PYTHON",
    "ODIL_PYTHON_ENV",
    "ODIL_STORE_SCP_SCRIPT",
    "PIXELMED_GET_SOURCE",
    "PIXELMED_JAR",
    "PIXELMED_JAR_ENV",
    "PYNETDICOM_SCP_SCRIPT",
    "PYNETDICOM_SCU_SCRIPT",
    "STORESCU_PROPOSE_FLAGS",
    "DcmtkNotFoundError",
    "DcmtkStoreSCP",
    "OdilStoreSCP",
    "PeerStartError",
    "ProposeOption",
    "PynetdicomSCP",
    "dcmtk_echoscu",
    "dcmtk_env",
    "dcmtk_storescu",
    "echoscu_command",
    "free_port",
    "instance_differences",
    "missing_dcmtk_programs",
    "odil_python",
    "pixelmed_get_command",
    "pixelmed_jar",
    "pynetdicom_scu_command",
    "require_dcmtk",
    "storescu_command",
    "wait_for_port",
]

LOCALHOST = "127.0.0.1"

#: The pynetdicom peers, run as scripts by path (they live in the test tree, not in a package
#: the child's interpreter could import with ``-m``).
PYNETDICOM_SCP_SCRIPT = Path(__file__).resolve().with_name("pynetdicom_scp.py")
PYNETDICOM_SCU_SCRIPT = Path(__file__).resolve().with_name("pynetdicom_scu.py")

#: Environment variable naming the folder of DCMTK's programs (instead of searching PATH).
DCMTK_BIN_ENV = "ASYNCDICOM_DCMTK_BIN"

#: The DCMTK programs the interop tests use.
DCMTK_PROGRAMS: tuple[str, ...] = (
    "storescp",
    "storescu",
    "echoscu",
    "dcmdump",
    "findscu",
    "getscu",
    "movescu",
)

#: DCMTK 3.6.7 accepts ``--max-pdu`` values in this closed range only (see ``storescp --help``).
DCMTK_MAX_PDU_RANGE: tuple[int, int] = (4096, 131072)

ProposeOption = Literal[
    "uncompr",
    "little",
    "big",
    "implicit",
    "lossless",
    "jpeg8",
    "jpeg12",
    "j2k-lossless",
    "j2k-lossy",
    "jls-lossless",
    "jls-lossy",
    "rle",
    "deflated",
]

#: storescu transfer syntax proposal flags (DCMTK 3.6.7). All but the first four also propose
#: every uncompressed transfer syntax, in a separate presentation context unless ``+C``.
STORESCU_PROPOSE_FLAGS: dict[str, str] = {
    "uncompr": "-x=",  # all uncompressed, explicit VR local byte order first (default)
    "little": "-xe",  # all uncompressed, explicit VR little endian first
    "big": "-xb",  # all uncompressed, explicit VR big endian first
    "implicit": "-xi",  # implicit VR little endian only
    "lossless": "-xs",  # JPEG lossless (process 14 SV1) + uncompressed
    "jpeg8": "-xy",  # JPEG baseline 8 bit + uncompressed
    "jpeg12": "-xx",  # JPEG extended 12 bit + uncompressed
    "j2k-lossless": "-xv",  # JPEG 2000 lossless only (.4.90) + uncompressed
    "j2k-lossy": "-xw",  # JPEG 2000 (.4.91) + uncompressed
    "jls-lossless": "-xt",  # JPEG-LS lossless + uncompressed
    "jls-lossy": "-xu",  # JPEG-LS near-lossless + uncompressed
    "rle": "-xr",  # RLE lossless + uncompressed
    "deflated": "-xd",  # deflated explicit VR little endian + uncompressed
}

_TRAILING_PADDING = 0xFFFCFFFC
_PIXEL_DATA = 0x7FE00010

# How long a peer gets to leave after a polite request before it is killed.
_STOP_GRACE_SECONDS = 5.0


class PeerStartError(RuntimeError):
    """A peer process exited or did not become ready in time; the message carries its log."""


class DcmtkNotFoundError(FileNotFoundError):
    """One or more DCMTK programs are not on PATH."""


# --------------------------------------------------------------------------------------------
# Ports and readiness
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago.

    The OS picks it (bind to port 0). Another process may take it before the caller binds it;
    :class:`DcmtkStoreSCP` retries with a new port when that happens.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _process_output(proc: subprocess.Popen[Any]) -> str:
    """Whatever the (dead) process wrote to a piped stderr, decoded leniently."""
    stream = proc.stderr
    if stream is None:
        return ""
    try:
        data = stream.read()
    except (OSError, ValueError):
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return str(data)


def _listens_on(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` has a TCP socket listening on ``port``; None if unknown.

    Uses psutil when it is installed (it is in the ``test`` and ``bench`` extras).
    """
    try:
        import psutil
    except ImportError:
        return None
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    return any(
        conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port
        for conn in connections
    )


def wait_for_port(
    host: str,
    port: int,
    timeout: float = 10.0,
    proc: subprocess.Popen[Any] | None = None,
) -> None:
    """Block until a TCP connection to ``(host, port)`` succeeds, then close it.

    Used only for programs that give no readiness signal (DCMTK ``storescp``). Attempts are
    spaced by an exponential backoff (10 ms doubling to 200 ms) and bounded by ``timeout``.
    If ``proc`` is given and exits first, :class:`PeerStartError` is raised with its exit code
    and, when stderr is a pipe, its stderr. On timeout :class:`PeerStartError` is raised too.

    With ``proc`` given, a successful connection only counts if ``proc`` itself listens on the
    port (checked with psutil when available): otherwise the connection may have reached some
    other program that took the port first, and polling goes on until ``proc`` exits with its
    bind error.
    """
    deadline = time.monotonic() + timeout
    delay = 0.01
    last_error: OSError | None = None
    while True:
        if proc is not None and proc.poll() is not None:
            raise PeerStartError(
                f"process {proc.args!r} exited with code {proc.returncode} before "
                f"{host}:{port} accepted connections\n{_process_output(proc)}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PeerStartError(
                f"{host}:{port} did not accept connections within {timeout} s "
                f"(last error: {last_error!r})"
            )
        try:
            with socket.create_connection((host, port), timeout=min(1.0, remaining)):
                pass
        except OSError as exc:
            last_error = exc
        else:
            if proc is None or _listens_on(proc.pid, port) is not False:
                return
        # Polling is the only option here: the external program prints nothing when ready.
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.2)


# --------------------------------------------------------------------------------------------
# DCMTK
# --------------------------------------------------------------------------------------------


@functools.cache
def find_dcmtk_program(program: str) -> str | None:
    """Path of DCMTK's ``program``, or None.

    ``$ASYNCDICOM_DCMTK_BIN`` (a folder) wins if set.  Otherwise PATH is searched, skipping
    programs of the same name that are not DCMTK's: pynetdicom installs its own ``storescp``,
    ``storescu`` and ``echoscu`` scripts, which come first on PATH in many Python set-ups.
    A candidate counts as DCMTK when its ``--version`` output names DCMTK.
    """
    override = os.environ.get(DCMTK_BIN_ENV)
    folders = [override] if override else os.environ.get("PATH", os.defpath).split(os.pathsep)
    for folder in folders:
        candidate = shutil.which(program, path=folder) if folder else None
        if candidate is not None and _is_dcmtk(candidate):
            return candidate
    return None


def _is_dcmtk(path: str) -> bool:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return "dcmtk" in (out.stdout + out.stderr).lower()


def missing_dcmtk_programs(programs: Iterable[str] = DCMTK_PROGRAMS) -> list[str]:
    """Names of the given DCMTK programs that cannot be found (see :func:`find_dcmtk_program`)."""
    return [name for name in programs if find_dcmtk_program(name) is None]


def require_dcmtk(programs: Iterable[str] = DCMTK_PROGRAMS) -> None:
    """Raise :class:`DcmtkNotFoundError` naming every missing DCMTK program."""
    missing = missing_dcmtk_programs(programs)
    if missing:
        raise DcmtkNotFoundError(
            "DCMTK programs not found on PATH: "
            + ", ".join(missing)
            + " (install DCMTK, e.g. `apt-get install dcmtk` on Debian/Ubuntu or "
            "`brew install dcmtk` on macOS; or set ASYNCDICOM_DCMTK_BIN to its folder)"
        )


def _dcmtk(program: str) -> str:
    path = find_dcmtk_program(program)
    if path is None:
        require_dcmtk([program])
        raise AssertionError("unreachable")  # pragma: no cover - require_dcmtk raised
    return path


def dcmtk_env(tcp_nodelay: bool = True) -> dict[str, str]:
    """Environment for a DCMTK process: ours, with ``TCP_NODELAY=1`` (or ``0``) set.

    DCMTK (dcmnet) reads ``TCP_NODELAY`` when it opens a connection; see the module docstring
    for why the default here disables Nagle's algorithm.
    """
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1" if tcp_nodelay else "0"
    return env


def _check_dcmtk_pdu(max_pdu: int) -> None:
    low, high = DCMTK_MAX_PDU_RANGE
    if not low <= max_pdu <= high:
        raise ValueError(f"DCMTK accepts --max-pdu in {low}..{high} only, got {max_pdu}")


def _timeout_seconds(timeout: float) -> str:
    # DCMTK timeouts are whole seconds; never round down to 0 (which means "no timeout").
    return str(max(1, int(timeout + 0.999)))


def echoscu_command(
    host: str,
    port: int,
    *,
    aet: str = "ECHOSCU",
    called_aet: str = "ANY-SCP",
    repeat: int = 1,
    max_pdu: int | None = None,
    timeout: float = 30.0,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Argument list for DCMTK ``echoscu``.

    ``--repeat N`` sends N C-ECHO requests on one association. ``-to`` bounds the TCP connect.
    """
    args = [_dcmtk("echoscu"), "-aet", aet, "-aec", called_aet, "-to", _timeout_seconds(timeout)]
    if repeat != 1:
        if repeat < 1:
            raise ValueError("repeat must be >= 1")
        args += ["--repeat", str(repeat)]
    if max_pdu is not None:
        _check_dcmtk_pdu(max_pdu)
        args += ["-pdu", str(max_pdu)]
    args += [*extra_args, host, str(port)]
    return args


def dcmtk_echoscu(
    host: str,
    port: int,
    *,
    aet: str = "ECHOSCU",
    called_aet: str = "ANY-SCP",
    repeat: int = 1,
    max_pdu: int | None = None,
    timeout: float = 30.0,
    extra_args: Sequence[str] = (),
    tcp_nodelay: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run DCMTK ``echoscu`` and return the finished process (stdout/stderr captured).

    Exit code 0 means the association was accepted and every C-ECHO answered (any status);
    DCMTK 3.6.7 uses 1 for connection/association failures, 70 for an aborted association.
    ``subprocess.TimeoutExpired`` is raised (and the child killed) after ``timeout`` seconds.
    ``tcp_nodelay`` sets ``TCP_NODELAY`` in the child's environment (see :func:`dcmtk_env`).
    """
    command = echoscu_command(
        host,
        port,
        aet=aet,
        called_aet=called_aet,
        repeat=repeat,
        max_pdu=max_pdu,
        timeout=timeout,
        extra_args=extra_args,
    )
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dcmtk_env(tcp_nodelay),
    )


def storescu_command(
    host: str,
    port: int,
    files: Sequence[str | os.PathLike[str]],
    *,
    aet: str = "STORESCU",
    called_aet: str = "ANY-SCP",
    max_pdu: int | None = None,
    propose: ProposeOption | None = None,
    combine: bool = False,
    required_only: bool = False,
    repeat: int = 1,
    recurse: bool = False,
    timeout: float = 60.0,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Argument list for DCMTK ``storescu``.

    * Directories among ``files`` turn on ``+sd`` (scan directories); ``recurse`` adds ``+r``.
    * ``propose`` picks a transfer syntax proposal flag from :data:`STORESCU_PROPOSE_FLAGS`;
      ``None`` keeps DCMTK's default (``-x=``: all uncompressed, explicit VR local order first).
    * ``combine`` (``+C``) puts all proposed transfer syntaxes in one context per SOP class
      instead of one context per transfer syntax.
    * ``required_only`` (``-R``) proposes only the SOP classes/transfer syntaxes of the input
      files instead of every storage SOP class DCMTK knows.
    * ``repeat`` (``--repeat N``) sends the whole file list N times on the one association.
    """
    if not files:
        raise ValueError("storescu needs at least one file or directory")
    args = [_dcmtk("storescu"), "-aet", aet, "-aec", called_aet, "-to", _timeout_seconds(timeout)]
    if any(Path(f).is_dir() for f in files):
        args.append("+sd")
        if recurse:
            args.append("+r")
    if propose is not None:
        args.append(STORESCU_PROPOSE_FLAGS[propose])
    if combine:
        args.append("+C")
    if required_only:
        args.append("-R")
    if max_pdu is not None:
        _check_dcmtk_pdu(max_pdu)
        args += ["-pdu", str(max_pdu)]
    if repeat != 1:
        if repeat < 1:
            raise ValueError("repeat must be >= 1")
        args += ["--repeat", str(repeat)]
    args += [*extra_args, host, str(port), *(os.fspath(f) for f in files)]
    return args


def dcmtk_storescu(
    host: str,
    port: int,
    files: Sequence[str | os.PathLike[str]],
    *,
    aet: str = "STORESCU",
    called_aet: str = "ANY-SCP",
    max_pdu: int | None = None,
    propose: ProposeOption | None = None,
    combine: bool = False,
    required_only: bool = False,
    repeat: int = 1,
    recurse: bool = False,
    timeout: float = 60.0,
    extra_args: Sequence[str] = (),
    tcp_nodelay: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run DCMTK ``storescu`` (see :func:`storescu_command`) and return the finished process.

    Exit code semantics observed with DCMTK 3.6.7: 0 when every file was sent and answered
    (storescu stops at the first failed store unless ``-nh``); 1 for every failure (connection
    refused, association rejected, no acceptable presentation context or a transfer syntax it
    cannot convert, no input files). A file without a preamble is sent as a bare data set.
    ``tcp_nodelay`` sets ``TCP_NODELAY`` in the child's environment (see :func:`dcmtk_env`);
    ``subprocess.TimeoutExpired`` is raised (and the child killed) after ``timeout`` seconds.
    """
    command = storescu_command(
        host,
        port,
        files,
        aet=aet,
        called_aet=called_aet,
        max_pdu=max_pdu,
        propose=propose,
        combine=combine,
        required_only=required_only,
        repeat=repeat,
        recurse=recurse,
        timeout=timeout,
        extra_args=extra_args,
    )
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=dcmtk_env(tcp_nodelay),
    )


# --------------------------------------------------------------------------------------------
# Long-running peers
# --------------------------------------------------------------------------------------------


class _PeerProcess:
    """Shared process handling: a log file for stderr, polite stop, then kill."""

    name = "peer"

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_dir: tempfile.TemporaryDirectory[str] | None = None
        self._log_file: IO[bytes] | None = None
        self.log_path: Path | None = None

    # -- process lifecycle -------------------------------------------------------------------

    def _open_log(self) -> IO[bytes]:
        if self._log_dir is None:
            self._log_dir = tempfile.TemporaryDirectory(prefix=f"asyncdicom-{self.name}-")
        self.log_path = Path(self._log_dir.name) / f"{self.name}.log"
        # A file, not a pipe: nobody has to drain it, so a chatty peer can never block.
        self._log_file = self.log_path.open("wb")
        return self._log_file

    def log_text(self) -> str:
        """Everything the peer wrote to stderr so far (also stdout for DCMTK)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text("utf-8", "replace")

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        """Exit code once stopped (or died); ``None`` while running."""
        return None if self._proc is None else self._proc.poll()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _request_stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()

    def stop(self) -> None:
        """Stop the peer: polite request, wait, terminate, wait, kill."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._request_stop(proc)
            try:
                proc.wait(timeout=_STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=_STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._after_stop()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _after_stop(self) -> None:
        pass

    def cleanup(self) -> None:
        """Stop and remove the log directory."""
        self.stop()
        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None
            self.log_path = None

    def _start_failed(self, message: str) -> PeerStartError:
        log = self.log_text()
        self.stop()
        return PeerStartError(f"{message}\n--- {self.name} log ---\n{log}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


class DcmtkStoreSCP(_PeerProcess):
    """DCMTK ``storescp`` in single-process mode, as a context manager.

    Command line built (DCMTK 3.6.7)::

        storescp -aet AET [+xa] [-pm] -pdu N (-od DIR | --ignore) [+B] [extra_args] PORT

    * ``+xa`` (``--accept-all``): accept every transfer syntax DCMTK supports (uncompressed,
      deflated, JPEG, JPEG-LS, JPEG 2000, RLE, MPEG, HEVC). Without it only the three
      uncompressed syntaxes are accepted, explicit VR preferred.
    * Storage SOP classes: storescp accepts every storage SOP class in DCMTK's list by default;
      ``promiscuous=True`` adds ``-pm`` to accept unknown SOP classes as well.
    * ``--ignore``: receive every data set but store nothing (used when ``output_dir`` is None).
    * ``-pdu``: maximum PDU length we receive, 4096..131072 (DCMTK default 16384).
    * ``+B`` (``bit_preserving``): write data sets exactly as received.
    * Files are written as ``<modality>.<SOP Instance UID>`` in the transfer syntax received.
    * storescp does not check the called AE title; ``aet`` is what it answers with.
    * ``TCP_NODELAY=1`` is set in its environment unless ``tcp_nodelay=False``.

    It always runs one process handling one association at a time (no ``--fork``), which is
    how the benchmarks compare implementations.
    """

    name = "storescp"

    def __init__(
        self,
        *,
        port: int | None = None,
        aet: str = "STORESCP",
        output_dir: str | os.PathLike[str] | None = None,
        max_pdu: int = 16384,
        accept_all_transfer_syntaxes: bool = True,
        promiscuous: bool = False,
        bit_preserving: bool = False,
        extra_args: Sequence[str] = (),
        tcp_nodelay: bool = True,
        start_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        _check_dcmtk_pdu(max_pdu)
        self.host = LOCALHOST
        self._requested_port = port
        self.port = port if port is not None else 0
        self.aet = aet
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.max_pdu = max_pdu
        self.accept_all_transfer_syntaxes = accept_all_transfer_syntaxes
        self.promiscuous = promiscuous
        self.bit_preserving = bit_preserving
        self.extra_args = tuple(extra_args)
        self.tcp_nodelay = tcp_nodelay
        self.start_timeout = start_timeout

    def command(self, port: int) -> list[str]:
        """The storescp argument list for ``port``."""
        args = [_dcmtk("storescp"), "-aet", self.aet, "-pdu", str(self.max_pdu)]
        if self.accept_all_transfer_syntaxes:
            args.append("+xa")
        if self.promiscuous:
            args.append("-pm")
        if self.output_dir is None:
            args.append("--ignore")
        else:
            args += ["-od", os.fspath(self.output_dir)]
        if self.bit_preserving:
            args.append("+B")
        args += [*self.extra_args, str(port)]
        return args

    def start(self) -> DcmtkStoreSCP:
        """Start storescp and return once it accepts TCP connections on 127.0.0.1."""
        if self.is_running():
            raise RuntimeError("storescp is already running")
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        # With a port we chose ourselves, losing the race for it is retried with another one.
        attempts = 1 if self._requested_port is not None else 5
        for attempt in range(attempts):
            port = self._requested_port if self._requested_port is not None else free_port()
            log = self._open_log()
            self._proc = subprocess.Popen(
                self.command(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dcmtk_env(self.tcp_nodelay),
            )
            try:
                wait_for_port(LOCALHOST, port, timeout=self.start_timeout, proc=self._proc)
            except PeerStartError as exc:
                text = self.log_text()
                lost_race = "Address already in use" in text and attempt + 1 < attempts
                error = self._start_failed(f"storescp did not start: {exc}")
                if lost_race:
                    continue
                raise error from None
            self.port = port
            return self
        raise AssertionError("unreachable")  # pragma: no cover - loop returns or raises

    def received_files(self) -> list[Path]:
        """Files storescp wrote to ``output_dir``, sorted by name."""
        if self.output_dir is None:
            raise RuntimeError("storescp runs with --ignore: it writes no files")
        return sorted(p for p in self.output_dir.iterdir() if p.is_file())

    def __enter__(self) -> DcmtkStoreSCP:
        return self.start()


class PynetdicomSCP(_PeerProcess):
    """pynetdicom Storage + Verification SCP in its own Python process, as a context manager.

    Runs ``python tests/harness/pynetdicom_scp.py`` (a separate process, so pynetdicom's
    threads do not compete with the test's event loop for the GIL). The child binds
    ``127.0.0.1:port`` (port 0 by default: the OS picks one) and prints ``READY <port>``; the
    harness waits for that line. On stop, stdin is closed (the child's signal to shut down)
    and the child prints one ``STATS {json}`` line, available as :attr:`stats`.

    Received data sets are written unchanged (as sent, with file meta information) to
    ``output_dir/<SOP Instance UID>.dcm``; ``output_dir=None`` passes ``--ignore``.
    ``max_pdu=0`` means no limit. ``tcp_nodelay`` (default True, like the DCMTK peers here)
    passes ``--tcp-nodelay``: pynetdicom itself leaves Nagle's algorithm on.
    """

    name = "pynetdicom-scp"

    def __init__(
        self,
        *,
        port: int = 0,
        aet: str = "PYNETDICOM",
        output_dir: str | os.PathLike[str] | None = None,
        max_pdu: int = 16382,
        max_associations: int = 64,
        tcp_nodelay: bool = True,
        extra_args: Sequence[str] = (),
        start_timeout: float = 30.0,
    ) -> None:
        super().__init__()
        self.host = LOCALHOST
        self.port = port
        self.aet = aet
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.max_pdu = max_pdu
        self.max_associations = max_associations
        self.tcp_nodelay = tcp_nodelay
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self.stats: dict[str, Any] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None

    def command(self) -> list[str]:
        """The child's argument list."""
        args = [  # a fresh interpreter: the start-up check finds its pid listening
            sys.executable,
            os.fspath(PYNETDICOM_SCP_SCRIPT),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--aet",
            self.aet,
            "--max-pdu",
            str(self.max_pdu),
            "--max-associations",
            str(self.max_associations),
        ]
        if self.output_dir is None:
            args.append("--ignore")
        else:
            args += ["--output-dir", os.fspath(self.output_dir)]
        if self.tcp_nodelay:
            args.append("--tcp-nodelay")
        args += list(self.extra_args)
        return args

    def _read_stdout(self, stream: IO[bytes]) -> None:
        # Drains stdout so the child never blocks on a full pipe; EOF is reported as None.
        with contextlib.suppress(ValueError, OSError):
            for raw in stream:
                self._lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
        self._lines.put(None)

    def start(self) -> PynetdicomSCP:
        """Start the child and return once it printed ``READY <port>``."""
        if self.is_running():
            raise RuntimeError("pynetdicom SCP is already running")
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        log = self._open_log()
        self._lines = queue.Queue()
        self.stats = None
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
        )
        assert self._proc.stdout is not None
        self._reader = threading.Thread(
            target=self._read_stdout, args=(self._proc.stdout,), daemon=True
        )
        self._reader.start()
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise self._start_failed(
                    f"pynetdicom SCP printed no READY line within {self.start_timeout} s"
                ) from None
            if line is None:
                raise self._start_failed(
                    f"pynetdicom SCP exited with code {self._proc.wait()} before READY"
                )
            if line.startswith("READY "):
                self.port = int(line.split()[1])
                return self

    def _request_stop(self, proc: subprocess.Popen[bytes]) -> None:
        # Closing stdin is the child's shutdown signal; it then prints its STATS line.
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    def _after_stop(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=_STOP_GRACE_SECONDS)
            self._reader = None
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is not None and line.startswith("STATS "):
                self.stats = json.loads(line[len("STATS ") :])
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()

    def received_files(self) -> list[Path]:
        """Files written to ``output_dir`` (``<SOP Instance UID>.dcm``), sorted by name."""
        if self.output_dir is None:
            raise RuntimeError("pynetdicom SCP runs with --ignore: it writes no files")
        return sorted(p for p in self.output_dir.glob("*.dcm") if p.is_file())

    def __enter__(self) -> PynetdicomSCP:
        return self.start()


# --------------------------------------------------------------------------------------------
# odil (Debian's python3-odil) and PixelMed (Debian's pixelmed-apps)
# --------------------------------------------------------------------------------------------

#: The odil Storage SCP script, run with :data:`ODIL_PYTHON` (not the test interpreter).
ODIL_STORE_SCP_SCRIPT = Path(__file__).resolve().with_name("odil_store_scp.py")

#: Environment variable naming the Python interpreter that can ``import odil``.
ODIL_PYTHON_ENV = "ASYNCDICOM_ODIL_PYTHON"

#: Debian's python3-odil is built for the system interpreter, not for a virtual environment.
ODIL_PYTHON = "/usr/bin/python3"

#: Environment variable naming PixelMed's jar (instead of Debian's path).
PIXELMED_JAR_ENV = "ASYNCDICOM_PIXELMED_JAR"

#: Where Debian's libpixelmed-java (a dependency of pixelmed-apps) installs the toolkit.
PIXELMED_JAR = "/usr/share/java/pixelmed.jar"

#: Our small PixelMed C-GET client, run by ``java`` as a single source file (JDK 11+).
PIXELMED_GET_SOURCE = Path(__file__).resolve().with_name("PixelmedGet.java")


def odil_python() -> str:
    """The interpreter that runs odil (``$ASYNCDICOM_ODIL_PYTHON``, else Debian's python3)."""
    return os.environ.get(ODIL_PYTHON_ENV) or ODIL_PYTHON


def pixelmed_jar() -> str:
    """PixelMed's jar (``$ASYNCDICOM_PIXELMED_JAR``, else Debian's path)."""
    return os.environ.get(PIXELMED_JAR_ENV) or PIXELMED_JAR


def pixelmed_get_command(
    host: str,
    port: int,
    called_aet: str,
    output_dir: str | os.PathLike[str],
    study_uid: str,
    sop_classes: Sequence[str],
    *,
    calling_aet: str = "PIXELMED",
) -> list[str]:
    """Argument list running PixelMed's ``GetSOPClassSCU`` (through ``PixelmedGet.java``): a
    STUDY level C-GET (Study Root) of ``study_uid``, received into ``output_dir``.

    It proposes, for each storage SOP class of ``sop_classes``, a context with every
    uncompressed transfer syntax and one for each of them alone (PixelMed's "their choice"
    and "our choice" together), with the SCP role for each. Prints ``RECEIVED <path> <transfer
    syntax>`` per instance, ``DONE`` on success; exits 1 with PixelMed's exception otherwise.
    """
    return [
        "java",
        "-cp",
        pixelmed_jar(),
        os.fspath(PIXELMED_GET_SOURCE),
        host,
        str(port),
        called_aet,
        calling_aet,
        os.fspath(output_dir),
        study_uid,
        *sop_classes,
    ]


class OdilStoreSCP(_PeerProcess):
    """odil's Storage + Verification SCP (``tests/harness/odil_store_scp.py`` run with
    :func:`odil_python`), as a context manager.

    odil cannot listen on port 0 and report the port, so the harness chooses a free one and
    polls it, retrying with another port if it lost the race (as for DCMTK's storescp). odil
    listens on every interface. Each data set is written to ``output_dir`` (a duplicate as a
    second file); :meth:`stored_uids` lists the SOP Instance UIDs in the order they were
    stored, repeats included, from the script's log.
    """

    name = "odil-storescp"

    def __init__(
        self,
        *,
        output_dir: str | os.PathLike[str],
        aet: str = "ODIL",
        start_timeout: float = 15.0,
    ) -> None:
        super().__init__()
        self.host = LOCALHOST
        self.port = 0
        self.aet = aet  # odil's acceptor does not check the called AE title
        self.output_dir = Path(output_dir)
        self.start_timeout = start_timeout

    def command(self, port: int) -> list[str]:
        """The script's argument list for ``port``."""
        return [
            odil_python(),
            os.fspath(ODIL_STORE_SCP_SCRIPT),
            "--port",
            str(port),
            "--output-dir",
            os.fspath(self.output_dir),
        ]

    def start(self) -> OdilStoreSCP:
        """Start the SCP and return once it accepts TCP connections on 127.0.0.1."""
        if self.is_running():
            raise RuntimeError("odil SCP is already running")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYTHONPATH", None)  # the system interpreter must not see the venv's modules
        attempts = 5
        for attempt in range(attempts):
            port = free_port()
            log = self._open_log()
            self._proc = subprocess.Popen(
                self.command(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            try:
                self._wait_listening(port)
            except PeerStartError as exc:
                lost_race = self._proc.poll() == 98 and attempt + 1 < attempts
                error = self._start_failed(f"odil SCP did not start: {exc}")
                if lost_race:
                    continue
                raise error from None
            self.port = port
            return self
        raise AssertionError("unreachable")  # pragma: no cover - loop returns or raises

    def _wait_listening(self, port: int) -> None:
        # odil listens for one association at a time and listens again after it: a probe
        # connection would be taken for an association, and the test's own could then find
        # the port closed for a moment. So ask the OS whether the process listens (psutil);
        # without psutil, probe once and wait until the script has dealt with the probe (it
        # listens again at once).
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        delay = 0.01
        while (listening := _listens_on(self._proc.pid, port)) is not True:
            if listening is None:
                wait_for_port(LOCALHOST, port, timeout=self.start_timeout, proc=self._proc)
                while "ERROR " not in self.log_text():
                    if time.monotonic() > deadline:
                        raise PeerStartError("odil SCP did not report the readiness probe")
                    time.sleep(0.05)
                return
            if self._proc.poll() is not None:
                raise PeerStartError(f"odil SCP exited with code {self._proc.returncode}")
            if time.monotonic() > deadline:
                raise PeerStartError(f"odil SCP did not listen on {port} in {self.start_timeout} s")
            # Polling is the only option here: odil prints nothing when it listens.
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def stored_uids(self) -> list[str]:
        """SOP Instance UIDs odil stored, in order, repeats included."""
        return [
            line.split()[1]
            for line in self.log_text().splitlines()
            if line.startswith("STORED ") and len(line.split()) == 2
        ]

    def received_files(self) -> list[Path]:
        """Files odil wrote to ``output_dir``, sorted by name (a duplicate has a ``.dcm.N``
        name)."""
        return sorted(
            p for p in self.output_dir.iterdir() if p.is_file() and not p.name.endswith(".part")
        )

    def __enter__(self) -> OdilStoreSCP:
        return self.start()


def pynetdicom_scu_command(operation: str, host: str, port: int, *args: str) -> list[str]:
    """Argument list for ``python tests/harness/pynetdicom_scu.py OPERATION HOST PORT ...``.

    Operations: ``echo`` (``--repeat N``), ``assoc-echo`` (``--count N``), ``store FILES...``.
    The child prints one JSON object on stdout (see that module).
    """
    return [
        *python_script(PYNETDICOM_SCU_SCRIPT),
        operation,
        host,
        str(port),
        *args,
    ]


# --------------------------------------------------------------------------------------------
# Comparing what was received with what was sent
# --------------------------------------------------------------------------------------------


def _significant(tag: int) -> bool:
    """False for elements a receiver may legitimately add or drop when re-encoding.

    Group length elements (gggg,0000) and Data Set Trailing Padding (FFFC,FFFC), which PS3.10
    7.2 lets any reader ignore; DCMTK drops the padding of CT_small.dcm, for example.
    """
    return (tag & 0xFFFF) != 0 and tag != _TRAILING_PADDING


def instance_differences(
    received: str | os.PathLike[str], source: str | os.PathLike[str]
) -> list[str]:
    """Differences between a received Part 10 file and the file that was sent.

    Compares SOP Class UID, SOP Instance UID, Pixel Data as bytes (all uncompressed
    little-endian transfer syntaxes share the byte layout of OB/OW pixel data, so a change
    between implicit and explicit VR little endian is not a difference; a change of byte order
    or compression is), the set of top-level data element tags and the decoded value of each
    (sequences recursively, through pydicom's equality), except group lengths and trailing
    padding. An empty list means they match. The file meta information (group 0002) is not
    compared: each receiver writes its own.
    """
    # Samples may hold values pydicom warns about (rtdose.dcm has a UID component with a
    # leading zero); the comparison is about transfer fidelity, not validity.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Invalid value for VR", category=UserWarning)
        return _instance_differences(received, source)


def instance_uid(path: str | os.PathLike[str]) -> str:
    """The SOP Instance UID of a DICOM file (read without its pixel data)."""
    from pydicom import dcmread

    return str(dcmread(os.fspath(path), stop_before_pixels=True).SOPInstanceUID)


def transfer_syntax_of(path: str | os.PathLike[str]) -> str:
    """The Transfer Syntax UID in a Part 10 file's meta information."""
    from pydicom import dcmread

    return str(dcmread(os.fspath(path), stop_before_pixels=True).file_meta.TransferSyntaxUID)


def assert_instances_match(
    received: Iterable[str | os.PathLike[str]], sent: Sequence[str | os.PathLike[str]]
) -> None:
    """Every sent instance arrived exactly once and matches (UIDs, pixel data, values)."""
    received = list(received)
    got = {instance_uid(p): p for p in received}
    want = {instance_uid(p): p for p in sent}
    assert len(got) == len(received), "an instance arrived twice"
    assert sorted(got) == sorted(want)
    for uid, source in want.items():
        assert instance_differences(got[uid], source) == [], os.fspath(source)


def _instance_differences(
    received: str | os.PathLike[str], source: str | os.PathLike[str]
) -> list[str]:
    from pydicom import dcmread

    got = dcmread(os.fspath(received))
    want = dcmread(os.fspath(source))
    problems: list[str] = []
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if got.get(keyword) != want.get(keyword):
            problems.append(f"{keyword}: received {got.get(keyword)!r}, sent {want.get(keyword)!r}")
    if ("PixelData" in got) != ("PixelData" in want):
        problems.append("PixelData present in only one of received/sent")
    elif "PixelData" in want and bytes(got.PixelData) != bytes(want.PixelData):
        problems.append(
            f"PixelData differs ({len(got.PixelData)} bytes received, {len(want.PixelData)} sent)"
        )
    got_tags = {elem.tag for elem in got if _significant(elem.tag)}
    want_tags = {elem.tag for elem in want if _significant(elem.tag)}
    if got_tags != want_tags:
        problems.append(
            f"top-level tags differ: missing {sorted(map(str, want_tags - got_tags))}, "
            f"extra {sorted(map(str, got_tags - want_tags))}"
        )
    for tag in sorted(got_tags & want_tags):
        if tag == _PIXEL_DATA:
            continue  # compared as bytes above
        if got[tag].value != want[tag].value:
            keyword = want[tag].keyword or "private"
            problems.append(f"value of {want[tag].tag} {keyword} differs")
    return problems
