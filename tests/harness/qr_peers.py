"""Query/Retrieve SCPs of other implementations, as context managers: DCMTK's ``dcmqrscp`` and
pynetdicom's ``qrscp`` application, each with its own storage folder, filled with C-STORE and
moving to the destinations given (AE title -> (host, port)).

* ``dcmqrscp`` runs with its defaults (a child process per association: in its own process
  group, stopped as a group; DCMTK 3.6.7's ``--single-process`` exits after a C-STORE
  association), a configuration file written here (one storage area, any peer, the
  destinations in its HostTable) and ``TCP_NODELAY=1``.
* pynetdicom's ``qrscp`` runs with an ini file written here (the destinations as sections),
  through ``pynetdicom_qrscp.py``, which closes a threading race of pynetdicom 2.x that loses
  a fast C-STORE-RSP (see there); it keeps its index with SQLAlchemy
  (``requires_peer("pynetdicom-qrscp")``).

Both listen on a port chosen with :func:`~harness.peers.free_port` (a lost race is retried).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from .peers import (
    LOCALHOST,
    PeerStartError,
    _PeerProcess,
    dcmtk_env,
    find_dcmtk_program,
    free_port,
    wait_for_port,
)

__all__ = ["Dcmqrscp", "PynetdicomQRSCP"]


class _QRPeer(_PeerProcess):
    """A Q/R SCP process: ``command(port)`` and ``config`` are the subclass's."""

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str,
        destinations: Mapping[str, tuple[str, int]],
        start_timeout: float = 30.0,
    ) -> None:
        super().__init__()
        self.workdir = workdir
        self.storage = workdir / "storage"
        self.aet = aet
        self.destinations = dict(destinations)
        self.host = LOCALHOST
        self.port = 0
        self.start_timeout = start_timeout

    def command(self, port: int) -> tuple[list[str], dict[str, str] | None]:
        raise NotImplementedError

    def start(self) -> _QRPeer:
        """Start the SCP and return once it accepts TCP connections on 127.0.0.1."""
        self.storage.mkdir(parents=True, exist_ok=True)
        for attempt in range(5):
            port = free_port()
            cmd, env = self.command(port)
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._open_log(),
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,  # its own process group (dcmqrscp forks)
            )
            try:
                wait_for_port(LOCALHOST, port, timeout=self.start_timeout, proc=self._proc)
            except PeerStartError as exc:
                lost_race = "in use" in self.log_text().lower() and attempt < 4
                error = self._start_failed(f"{self.name} did not start: {exc}")
                if lost_race:
                    continue
                raise error from None
            self.port = port
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _request_stop(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the children too

    def __enter__(self) -> _QRPeer:
        return self.start()


class Dcmqrscp(_QRPeer):
    """DCMTK ``dcmqrscp`` serving one storage area as ``aet``."""

    name = "dcmqrscp"

    def command(self, port: int) -> tuple[list[str], dict[str, str] | None]:
        config = self.workdir / "dcmqrscp.cfg"
        hosts = [
            f"dest{n} = ({title}, {host}, {dest_port})"
            for n, (title, (host, dest_port)) in enumerate(self.destinations.items())
        ]
        config.write_text(
            "\n".join(
                [
                    f"NetworkTCPPort  = {port}",
                    "MaxPDUSize      = 16384",
                    "MaxAssociations = 16",
                    "HostTable BEGIN",
                    *hosts,
                    "HostTable END",
                    "VendorTable BEGIN",
                    "VendorTable END",
                    "AETable BEGIN",
                    # AE title, storage area, access, (max studies, max bytes per study), peers
                    f"{self.aet} {self.storage} RW (100, 1024mb) ANY",
                    "AETable END",
                    "",
                ]
            )
        )
        program = find_dcmtk_program("dcmqrscp") or "dcmqrscp"
        return [program, "-c", os.fspath(config), str(port)], dcmtk_env()


class PynetdicomQRSCP(_QRPeer):
    """pynetdicom's ``qrscp`` application serving ``storage`` as ``aet``."""

    name = "pynetdicom-qrscp"

    def command(self, port: int) -> tuple[list[str], dict[str, str] | None]:
        config = self.workdir / "qrscp.ini"
        lines = [
            "[DEFAULT]",
            f"ae_title: {self.aet}",
            f"port: {port}",
            "max_pdu: 16382",
            "acse_timeout: 30",
            "dimse_timeout: 60",
            "network_timeout: 60",
            f"bind_address: {LOCALHOST}",
            f"instance_location: {self.storage}",
            f"database_location: {self.workdir / 'index.sqlite'}",
            "log_identifier: False",
        ]
        for title, (host, dest_port) in self.destinations.items():
            lines += [f"[{title}]", f"address: {host}", f"port: {dest_port}"]
        config.write_text("\n".join([*lines, ""]))
        launcher = Path(__file__).with_name("pynetdicom_qrscp.py")
        return [sys.executable, os.fspath(launcher), "-v", "-c", os.fspath(config)], None
