"""Start a private Orthanc (the open-source DICOM server) on 127.0.0.1 and drive its REST API.

Like :mod:`harness.peers`, this harness does not use asyncdicom's networking: Orthanc
runs as a subprocess (``/usr/sbin/Orthanc CONFIG.json``, Debian package ``orthanc``, 1.10.1 on
Debian 12) and is controlled over HTTP with :mod:`urllib.request`. Everything is synchronous;
from anyio tests run the blocking calls with ``anyio.to_thread.run_sync``.

What :class:`OrthancPeer` sets up, all in one temporary folder that is removed on exit:

* ``orthanc.json``: its own ``StorageDirectory`` / ``IndexDirectory``, ``DicomAet``, a free
  ``DicomPort`` and ``HttpPort``, ``RemoteAccessAllowed: false``, ``AuthenticationEnabled:
  false``, no plugins (``"Plugins": []``: the Debian package's system configuration would load
  the worklist and serve-folders plugins, this one loads nothing), ``DicomModalities`` from the
  constructor, jobs not saved, ``DicomAssociationCloseDelay: 0``.
* ``orthanc.log``: Orthanc's stdout and stderr with ``--verbose``.

Orthanc 1.10.1 facts this harness relies on (checked by hand against the Debian build):

* It has no setting for the listening address: both the DICOM and the HTTP server bind
  ``0.0.0.0``. ``RemoteAccessAllowed: false`` only makes the HTTP server refuse clients that
  are not on the loopback interface; the DICOM port stays reachable from other hosts for the
  lifetime of the peer. Everything here talks to 127.0.0.1 only.
* ``DicomPort: 0`` does bind an OS-chosen port, but ``GET /system`` and the log then report
  0, so nobody learns which. :func:`~.peers.free_port` picks both ports instead; when one is
  taken Orthanc logs "privileged or already in use" and exits with status 255, and
  :meth:`OrthancPeer.start` retries with new ports.
* The DICOM server is started before the HTTP server (the log's order), so once ``GET /system``
  answers, the DICOM port accepts associations too (also checked with psutil when available).
  ``GET /system`` is polled with bounded retries because Orthanc prints no machine-readable
  readiness line; the answer's ``Name`` is a random token written into the configuration,
  which proves the HTTP port belongs to *this* Orthanc and not to whatever else grabbed it.
* As an SCU (REST ``/modalities/NAME/echo`` and ``/store``) Orthanc uses its ``DicomAet`` as
  calling AE title unless the modality entry has a ``LocalAet``. With the default
  ``DicomAssociationCloseDelay`` (5 s) it keeps an SCU association open after the last request
  for reuse; the harness sets 0 so that each REST call opens and releases its own association
  and a test's SCP sees complete associations.
* ``DicomCheckCalledAet`` (on by default here) rejects a wrong called AE title with
  A-ASSOCIATE-RJ (permanent, service-user, reason 7), but compares case-insensitively unless
  ``StrictAetComparison`` is set: ``orthanc`` is accepted for ``ORTHANC``.
* A failed REST C-ECHO answers HTTP 500 with the reason in ``Details``; so does a REST C-STORE
  whose SCP answered a failure status (Orthanc stops at the first one).
* ``SIGTERM`` makes Orthanc stop its threads in order, which takes 2 to 3 s; :meth:`stop` waits
  for that (then terminates again and kills, like the other peers).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .peers import LOCALHOST, PeerStartError, _listens_on, _PeerProcess, free_port

__all__ = [
    "ORTHANC_BINARY",
    "ORTHANC_BINARY_ENV",
    "OrthancModality",
    "OrthancNotFoundError",
    "OrthancPeer",
    "OrthancRestError",
    "OrthancStoreError",
    "OrthancStoreResult",
    "OrthancUpload",
    "find_orthanc",
    "upload_all",
]

#: Where the Debian package ``orthanc`` installs the server.
ORTHANC_BINARY = "/usr/sbin/Orthanc"

#: Environment variable naming the Orthanc executable to use instead of the default lookup.
ORTHANC_BINARY_ENV = "ASYNCDICOM_ORTHANC_BINARY"

# Orthanc's log line when its DICOM or HTTP port is in use (Orthanc 1.10.1, errors 2003/2004).
_PORT_IN_USE = "privileged or already in use"


class OrthancNotFoundError(FileNotFoundError):
    """The Orthanc executable is missing."""


class OrthancRestError(RuntimeError):
    """An Orthanc REST call failed: HTTP error status, or no answer at all.

    ``status`` is the HTTP status (``None`` if the connection failed), ``details`` Orthanc's
    JSON error body when it sent one (keys ``Message``, ``Details``, ``OrthancStatus``...).
    """

    def __init__(
        self, method: str, path: str, status: int | None, details: Mapping[str, Any], text: str
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.details: dict[str, Any] = dict(details)
        self.text = text
        super().__init__(
            f"{method} {path} -> {status if status is not None else 'no answer'}: {text}"
        )


class OrthancStoreError(RuntimeError):
    """Orthanc's C-STORE job reported failed instances (see :attr:`result`)."""

    def __init__(self, result: OrthancStoreResult) -> None:
        self.result = result
        super().__init__(
            f"Orthanc's C-STORE to {result.remote_aet} failed for {result.failed_instances_count} "
            f"of {result.instances_count} instances"
        )


@dataclass(frozen=True, slots=True)
class OrthancModality:
    """A remote DICOM node as Orthanc knows it (an entry of ``DicomModalities``).

    ``local_aet`` overrides Orthanc's calling AE title towards this node; ``timeout`` (seconds,
    0 = Orthanc's ``DicomScuTimeout``) bounds Orthanc's SCU network operations towards it.
    """

    aet: str
    port: int
    host: str = LOCALHOST
    local_aet: str | None = None
    timeout: int = 0

    def to_json(self) -> dict[str, Any]:
        """The object form Orthanc accepts in its configuration and in ``PUT /modalities``."""
        entry: dict[str, Any] = {"AET": self.aet, "Host": self.host, "Port": self.port}
        if self.local_aet is not None:
            entry["LocalAet"] = self.local_aet
        if self.timeout:
            entry["Timeout"] = self.timeout
        return entry


@dataclass(frozen=True, slots=True)
class OrthancUpload:
    """Orthanc's answer to ``POST /instances``. ``status`` is ``"Success"`` or
    ``"AlreadyStored"``."""

    id: str
    status: str
    parent_patient: str
    parent_study: str
    parent_series: str


@dataclass(frozen=True, slots=True)
class OrthancStoreResult:
    """Orthanc's answer to a synchronous ``POST /modalities/NAME/store``."""

    instances_count: int
    failed_instances_count: int
    local_aet: str
    remote_aet: str
    parent_resources: tuple[str, ...]


def find_orthanc(binary: str | os.PathLike[str] | None = None) -> Path:
    """Path of the Orthanc executable: ``binary``, else ``$ASYNCDICOM_ORTHANC_BINARY`` (a path
    to the executable, the only candidate when set), else :data:`ORTHANC_BINARY`, else
    ``Orthanc`` on PATH. Raises :class:`OrthancNotFoundError` with installation advice."""
    if binary is None:
        binary = os.environ.get(ORTHANC_BINARY_ENV) or None
    candidates: list[str] = (
        [os.fspath(binary)] if binary is not None else [ORTHANC_BINARY, "Orthanc"]
    )
    for candidate in candidates:
        found = shutil.which(candidate)
        if found is not None:
            return Path(found)
    raise OrthancNotFoundError(
        f"Orthanc not found (looked for {', '.join(candidates)}); install it, e.g. "
        "`apt-get install --no-install-recommends orthanc` on Debian/Ubuntu (its system "
        "service is not needed: the tests start their own Orthanc)"
    )


class OrthancPeer(_PeerProcess):
    """A private Orthanc on 127.0.0.1 with a small REST client, as a context manager.

    ``aet`` is its DICOM AE title; ``modalities`` maps Orthanc's symbolic names to remote
    nodes (more can be added while it runs with :meth:`add_modality`). ``check_called_aet``
    makes Orthanc reject associations whose called AE title is not ``aet``.
    ``extra_config`` is merged last into the JSON configuration (Orthanc option names).
    ``http_timeout`` bounds each REST call; ``start_timeout`` the wait for readiness.

    Attributes once started: ``host``, ``port`` (DICOM), ``http_port``, ``base_url``,
    ``config_path``, ``log_path``.
    """

    name = "orthanc"

    def __init__(
        self,
        *,
        aet: str = "ORTHANC",
        modalities: Mapping[str, OrthancModality] | None = None,
        check_called_aet: bool = True,
        dicom_scu_timeout: int = 10,
        max_pdu: int = 16384,
        binary: str | os.PathLike[str] | None = None,
        extra_config: Mapping[str, Any] | None = None,
        start_timeout: float = 30.0,
        http_timeout: float = 60.0,
    ) -> None:
        super().__init__()
        self.host = LOCALHOST
        self.aet = aet
        self.port = 0
        self.http_port = 0
        self.modalities: dict[str, OrthancModality] = dict(modalities or {})
        self.check_called_aet = check_called_aet
        self.dicom_scu_timeout = dicom_scu_timeout
        self.max_pdu = max_pdu
        self.binary = binary
        self.extra_config: dict[str, Any] = dict(extra_config or {})
        self.start_timeout = start_timeout
        self.http_timeout = http_timeout
        self.config_path: Path | None = None
        self._configured_modalities = frozenset(self.modalities)
        # A random Name: GET /system echoes it, proving which process answers on the HTTP port.
        self._token = f"asyncdicom-{secrets.token_hex(6)}"

    # -- configuration and lifecycle ---------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def configuration(self, folder: Path, dicom_port: int, http_port: int) -> dict[str, Any]:
        """The JSON configuration for an Orthanc keeping its data under ``folder``."""
        config: dict[str, Any] = {
            "Name": self._token,
            "StorageDirectory": os.fspath(folder / "storage"),
            "IndexDirectory": os.fspath(folder / "index"),
            "Plugins": [],
            "LuaScripts": [],
            "HttpServerEnabled": True,
            "HttpPort": http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "RegisteredUsers": {},
            "WebDavEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": dicom_port,
            "DicomCheckCalledAet": self.check_called_aet,
            "DicomModalities": {name: m.to_json() for name, m in self.modalities.items()},
            "DicomModalitiesInDatabase": False,
            "DicomScuTimeout": self.dicom_scu_timeout,
            "DicomAssociationCloseDelay": 0,
            "MaximumPduLength": self.max_pdu,
            "SaveJobs": False,
            # Synthetic data only: keep UIDs and names readable in the log.
            "DeidentifyLogs": False,
        }
        config.update(self.extra_config)
        return config

    def command(self, config_path: Path) -> list[str]:
        """The Orthanc argument list (options must precede the configuration path)."""
        return [
            os.fspath(find_orthanc(self.binary)),
            "--verbose",
            "--no-jobs",
            os.fspath(config_path),
        ]

    def start(self) -> OrthancPeer:
        """Write the configuration, start Orthanc, return once its REST API answers."""
        if self.is_running():
            raise RuntimeError("Orthanc is already running")
        find_orthanc(self.binary)  # fail early, with advice, before making folders
        if self._log_dir is None:
            self._log_dir = tempfile.TemporaryDirectory(prefix="asyncdicom-orthanc-")
        folder = Path(self._log_dir.name)
        attempts = 5  # ports are chosen before Orthanc binds them: retry if one was taken
        for attempt in range(attempts):
            for sub in ("storage", "index"):
                shutil.rmtree(folder / sub, ignore_errors=True)
            self.port, self.http_port = _two_free_ports()
            self.config_path = folder / "orthanc.json"
            self.config_path.write_text(
                json.dumps(self.configuration(folder, self.port, self.http_port), indent=2),
                "utf-8",
            )
            log = self._open_log()
            self._proc = subprocess.Popen(
                self.command(self.config_path),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=folder,
            )
            try:
                self._wait_ready()
            except PeerStartError as exc:
                lost_race = _PORT_IN_USE in self.log_text() and attempt + 1 < attempts
                error = self._start_failed(f"Orthanc did not start: {exc}")
                if lost_race:
                    continue
                self.cleanup()  # the error carries the log; nobody will call __exit__
                raise error from None
            return self
        raise AssertionError("unreachable")  # pragma: no cover - loop returns or raises

    def _wait_ready(self) -> None:
        """Poll ``GET /system`` (bounded, with backoff) until this Orthanc answers it."""
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + self.start_timeout
        delay = 0.01
        last: str = "no attempt"
        while True:
            if proc.poll() is not None:
                raise PeerStartError(f"Orthanc exited with status {proc.returncode}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PeerStartError(
                    f"GET {self.base_url}/system did not answer within {self.start_timeout} s "
                    f"(last: {last})"
                )
            try:
                system = self._json("GET", "/system", timeout=min(2.0, remaining))
            except OrthancRestError as exc:
                last = str(exc)
            else:
                if system.get("Name") != self._token:
                    raise PeerStartError(
                        f"port {self.http_port} is answered by another HTTP server: {system!r}"
                    )
                if _listens_on(proc.pid, self.port) is False:
                    raise PeerStartError(f"Orthanc answers HTTP but not on DICOM port {self.port}")
                return
            # Polling is the only option: Orthanc writes no machine-readable readiness signal.
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.2)

    def __enter__(self) -> OrthancPeer:
        return self.start()

    # -- REST client --------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> bytes:
        """One HTTP request to the REST API; the response body. Raises :class:`OrthancRestError`
        for an HTTP error status or when Orthanc does not answer."""
        request = urllib.request.Request(self.base_url + path, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(
                request, timeout=self.http_timeout if timeout is None else timeout
            ) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", "replace")
            try:
                details = json.loads(text)
            except ValueError:
                details = {}
            if not isinstance(details, dict):
                details = {}
            raise OrthancRestError(method, path, exc.code, details, text) from None
        except (urllib.error.URLError, OSError) as exc:
            raise OrthancRestError(method, path, None, {}, repr(exc)) from None

    def _json(
        self, method: str, path: str, payload: Any = None, *, timeout: float | None = None
    ) -> Any:
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        data = self.request(method, path, body, timeout=timeout)
        return json.loads(data) if data.strip() else None

    def system(self) -> dict[str, Any]:
        """``GET /system``: version, AE title, ports."""
        result: dict[str, Any] = self._json("GET", "/system")
        return result

    def upload(self, source: str | os.PathLike[str] | bytes) -> OrthancUpload:
        """``POST /instances``: store a Part 10 file (a path or its bytes) in Orthanc."""
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        answer = json.loads(
            self.request("POST", "/instances", data, content_type="application/dicom")
        )
        return OrthancUpload(
            id=answer["ID"],
            status=answer["Status"],
            parent_patient=answer["ParentPatient"],
            parent_study=answer["ParentStudy"],
            parent_series=answer["ParentSeries"],
        )

    def instances(self) -> list[str]:
        """``GET /instances``: Orthanc's identifiers of every stored instance."""
        ids: list[str] = self._json("GET", "/instances")
        return ids

    def instance(self, instance_id: str) -> dict[str, Any]:
        """``GET /instances/ID``: the instance's main DICOM tags and parents."""
        info: dict[str, Any] = self._json("GET", f"/instances/{instance_id}")
        return info

    def instance_uids(self) -> dict[str, str]:
        """SOP Instance UID -> Orthanc identifier, for every stored instance."""
        return {self.instance(i)["MainDicomTags"]["SOPInstanceUID"]: i for i in self.instances()}

    def instance_file(self, instance_id: str) -> bytes:
        """``GET /instances/ID/file``: the Part 10 file Orthanc stored."""
        return self.request("GET", f"/instances/{instance_id}/file")

    def delete_all(self) -> None:
        """Delete every stored patient (and so every study, series and instance)."""
        for patient in self._json("GET", "/patients"):
            self.request("DELETE", f"/patients/{patient}")

    def reset(self) -> None:
        """Delete every stored instance and every modality added with :meth:`add_modality`
        (the ones given to the constructor stay), so a shared Orthanc looks fresh to a test."""
        self.delete_all()
        for name in list(self.list_modalities()):
            if name not in self._configured_modalities:
                self.remove_modality(name)

    def list_modalities(self) -> dict[str, Any]:
        """``GET /modalities?expand``: the modalities Orthanc knows, with their settings."""
        result: dict[str, Any] = self._json("GET", "/modalities?expand")
        return result

    def add_modality(self, name: str, modality: OrthancModality) -> None:
        """``PUT /modalities/NAME``: register (or replace) a remote node while running."""
        self._json("PUT", f"/modalities/{name}", modality.to_json())
        self.modalities[name] = modality

    def remove_modality(self, name: str) -> None:
        """``DELETE /modalities/NAME``."""
        self.request("DELETE", f"/modalities/{name}")
        self.modalities.pop(name, None)

    def echo(self, modality: str, *, timeout: int | None = None) -> None:
        """``POST /modalities/NAME/echo``: Orthanc sends a C-ECHO. Returns if it succeeded;
        raises :class:`OrthancRestError` (HTTP 500, reason in ``details["Details"]``) if the
        association or the C-ECHO failed. ``timeout`` (whole seconds) bounds Orthanc's SCU."""
        payload: dict[str, Any] = {}
        if timeout is not None:
            payload["Timeout"] = timeout
        self._json("POST", f"/modalities/{modality}/echo", payload)

    def store(
        self, modality: str, resources: Iterable[str], *, timeout: int | None = None
    ) -> OrthancStoreResult:
        """``POST /modalities/NAME/store`` (synchronous): Orthanc sends the given instances
        (or every instance of the given series/studies/patients) with C-STORE.

        Orthanc 1.10.1 stops at the first C-STORE-RSP with a failure status and answers HTTP
        500 with ``Details`` like ``C-STORE SCU to AET "X" has failed with DIMSE status
        0xA700``: that raises :class:`OrthancRestError`, as does a failed association or an
        unknown resource (404). A 200 answer that still counts failed instances raises
        :class:`OrthancStoreError`.
        """
        payload: dict[str, Any] = {"Resources": list(resources), "Synchronous": True}
        if timeout is not None:
            payload["Timeout"] = timeout
        answer = self._json("POST", f"/modalities/{modality}/store", payload)
        result = OrthancStoreResult(
            instances_count=int(answer["InstancesCount"]),
            failed_instances_count=int(answer["FailedInstancesCount"]),
            local_aet=str(answer["LocalAet"]),
            remote_aet=str(answer["RemoteAet"]),
            parent_resources=tuple(answer.get("ParentResources", ())),
        )
        if result.failed_instances_count:
            raise OrthancStoreError(result)
        return result


def _two_free_ports() -> tuple[int, int]:
    """Two distinct ports that were free a moment ago (DICOM, HTTP)."""
    first = free_port()
    second = free_port()
    while second == first:
        second = free_port()
    return first, second


def upload_all(peer: OrthancPeer, files: Sequence[str | os.PathLike[str]]) -> list[OrthancUpload]:
    """Upload several files; their :class:`OrthancUpload` answers in order."""
    return [peer.upload(f) for f in files]
