"""An audit trail of the acceptor's association decisions, one JSON object per line.

>>> audit = AuditLog.open("/var/log/dicom/audit.jsonl")   # AuditLogError if not writable
>>> audit.attach(scp)
>>> await scp.serve("0.0.0.0", 11112)

Each line is one event of an association this AE accepted or refused::

    {"time": "2024-05-01T10:20:30.123Z", "event": "rejected", "assoc_id": 7,
     "peer_host": "10.0.0.5", "peer_port": 50412, "calling_aet": "CT1", "called_aet": "PACS",
     "user": "alice", "identity_type": 2, "result": 1, "source": 1, "reason": 1,
     "reason_text": "association rejected (permanent) by service-user, reason 1: ...",
     "rule": "locked_out", "detail": "locked out after repeated failed identity checks ..."}

``event`` is ``accepted``, ``rejected`` (with the A-ASSOCIATE-RJ fields and the rule that
refused, :class:`asyncdicom.refusal.RefusalRule`), ``released``, ``aborted`` (with the A-ABORT
source, reason and who aborted; also an association whose connection ended without a release
or an abort) or ``tls_failed`` (a TLS handshake that failed: no association, no AE titles).
``user`` is the user name of a User Identity of type 1 or 2, ``null`` otherwise: the passcode
and the tokens of the other types (Kerberos, SAML, JWT) are credentials and never written.
An A-ASSOCIATE-RQ the upper layer refuses by itself (a protocol version without version 1) is
a ``rejected`` line with rule ``protocol_version`` and no AE titles.  Connections that end
before an A-ASSOCIATE-RQ, or whose request cannot be decoded at all (port scans, garbage), are
not audited: the log has them.

A line is written from the association's own task, as a hook: a short append to a
line-buffered file, which does not hold up the event loop.  A file that cannot be opened is an
error at :meth:`AuditLog.open`; a write that fails later (disk full) is logged, counted in
:attr:`AuditLog.write_errors`, and never raised into the association.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from . import errors
from .errors import AuditLogError
from .hooks import HookEvent
from .log import get_logger
from .protocol.upper_layer import Role
from .users import identity_user_name

if TYPE_CHECKING:
    from .ae import AE

__all__ = ["AuditLog", "AuditLogError", "AuditSink"]

#: receives each audit record (a JSON-serialisable dictionary)
AuditSink = Callable[[dict[str, Any]], object]

_EVENTS = (
    HookEvent.ASSOCIATION_REQUESTED,
    HookEvent.ASSOCIATION_ACCEPTED,
    HookEvent.ASSOCIATION_REJECTED,
    HookEvent.ASSOCIATION_RELEASED,
    HookEvent.ASSOCIATION_ABORTED,
    HookEvent.CONNECTION_CLOSED,
)


@dataclass
class _Seen:
    """What the audit trail knows of one association, from its A-ASSOCIATE-RQ on."""

    calling_aet: str | None
    called_aet: str | None
    user: str | None
    identity_type: int | None
    ended: bool = False


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Writes one audit record per association decision of the AEs it is attached to.

    ``sink`` receives each record as a dictionary (:meth:`open` gives a sink that appends JSON
    lines to a file).  An exception of the sink is logged and counted, never raised.
    """

    def __init__(self, sink: AuditSink, *, close: Callable[[], object] | None = None) -> None:
        self._sink = sink
        self._close = close
        self._seen: weakref.WeakKeyDictionary[Any, _Seen] = weakref.WeakKeyDictionary()
        self._log = get_logger()
        self._failing = False
        #: records handed to the sink
        self.records = 0
        #: records the sink failed to take (each failure streak is logged once)
        self.write_errors = 0

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> AuditLog:
        """An audit log appending JSON lines to ``path`` (created readable by its owner only);
        :class:`AuditLogError` if it cannot be opened for appending.  Each line is one
        ``write()`` to a file opened with ``O_APPEND``, so several processes may append to the
        same file (the workers of one server) without their lines interleaving."""
        target = Path(path)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            file: IO[bytes] = open(fd, "ab", buffering=0)  # noqa: SIM115
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise AuditLogError(f"cannot append to {str(target)!r}: {reason}") from None

        def write(record: dict[str, Any]) -> None:
            line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
            written = file.write(line)
            if written != len(line):  # a short write (disk full): a failed write
                raise OSError(f"short write: {written} of {len(line)} bytes")

        return cls(write, close=file.close)

    # ------------------------------------------------------------------ attaching

    def attach(self, ae: AE) -> None:
        """Audit the associations ``ae`` accepts or refuses from now on (and its failed TLS
        handshakes)."""
        for event in _EVENTS:
            ae.hooks.add(event, self._on_event)
        ae.tls_failure_callbacks.append(self._on_tls_failure)

    def install(self, ae: AE) -> None:
        """:meth:`attach`, the way every component is installed (``ae.install(audit)``)."""
        self.attach(ae)

    def detach(self, ae: AE) -> None:
        """Stop auditing ``ae``."""
        for event in _EVENTS:
            ae.hooks.remove(event, self._on_event)
        if self._on_tls_failure in ae.tls_failure_callbacks:
            ae.tls_failure_callbacks.remove(self._on_tls_failure)

    def close(self) -> None:
        """Close the file of :meth:`open` (attached AEs write nothing more)."""
        self._sink = _discard
        if self._close is not None:
            close, self._close = self._close, None
            try:
                close()
            except OSError as exc:
                self._log.error("audit_close_failed", error=str(exc))

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ records

    def _write(self, record: dict[str, Any]) -> None:
        try:
            self._sink(record)
        except Exception as exc:  # never into the association's task
            self.write_errors += 1
            if not self._failing:
                self._failing = True
                self._log.error("audit_write_failed", error=str(exc), audit_event=record["event"])
            return
        self.records += 1
        if self._failing:
            self._failing = False
            self._log.warning("audit_write_recovered", lost=self.write_errors)

    def _record(self, event: str, association: Any, seen: _Seen, **extra: Any) -> None:
        self._write(
            {
                "time": _utc_now(),
                "event": event,
                "assoc_id": association.id,
                "peer_host": association.peer_host,
                "peer_port": association.peer_port,
                "calling_aet": seen.calling_aet,
                "called_aet": seen.called_aet,
                "user": seen.user,
                "identity_type": seen.identity_type,
                **extra,
            }
        )

    def _on_event(self, event: HookEvent, association: Any, **data: Any) -> None:
        try:
            if association.role is Role.ACCEPTOR:
                self._observe(event, association, data)
        except Exception as exc:  # a bug here must not cost the association
            self._log.exception("audit_failed", error=str(exc), hook=event.value)

    def _observe(self, event: HookEvent, association: Any, data: dict[str, Any]) -> None:
        if event is HookEvent.ASSOCIATION_REQUESTED:
            rq = data["request"]
            item = rq.user_information.user_identity_rq
            self._seen[association] = _Seen(
                calling_aet=rq.calling_ae_title.strip(" "),
                called_aet=rq.called_ae_title.strip(" "),
                user=identity_user_name(item) if item is not None else None,
                identity_type=item.identity_type if item is not None else None,
            )
            return
        seen = self._seen.get(association)
        if seen is None and event is HookEvent.ASSOCIATION_REJECTED:
            # refused by the upper layer before the A-ASSOCIATE-RQ was passed on (a protocol
            # version without version 1): no AE titles or identity to tell
            seen = self._seen[association] = _Seen(None, None, None, None)
        if seen is None or seen.ended:
            return  # no A-ASSOCIATE-RQ seen (or already told how it ended)
        if event is HookEvent.ASSOCIATION_ACCEPTED:
            self._record("accepted", association, seen, contexts=len(association.accepted_contexts))
        elif event is HookEvent.ASSOCIATION_REJECTED:
            seen.ended = True
            rj = data["reject"]
            ask = getattr(association.ae, "refusal", None)
            refusal = ask(association) if ask is not None else None
            self._record(
                "rejected",
                association,
                seen,
                result=rj.result,
                source=rj.source,
                reason=rj.reason,
                reason_text=str(errors.AssociationRejected(rj.result, rj.source, rj.reason)),
                rule=refusal.rule.value if refusal is not None else None,
                detail=refusal.detail if refusal is not None else None,
            )
        elif event is HookEvent.ASSOCIATION_RELEASED:
            seen.ended = True
            self._record("released", association, seen)
        elif event is HookEvent.ASSOCIATION_ABORTED:
            seen.ended = True
            abort = data["abort"]
            text = errors.AssociationAborted(abort.source, abort.reason, local=abort.local)
            self._record(
                "aborted",
                association,
                seen,
                abort_source=abort.source,
                abort_reason=abort.reason,
                local=abort.local,
                detail=str(text),
            )
        elif event is HookEvent.CONNECTION_CLOSED:
            seen.ended = True
            self._record(
                "aborted",
                association,
                seen,
                abort_source=None,
                abort_reason=None,
                local=False,
                detail="the connection ended without a release or an abort",
            )

    def _on_tls_failure(self, host: str, port: int, error: str) -> None:
        self._write(
            {
                "time": _utc_now(),
                "event": "tls_failed",
                "assoc_id": None,
                "peer_host": host,
                "peer_port": port,
                "calling_aet": None,
                "called_aet": None,
                "user": None,
                "identity_type": None,
                "detail": error,
            }
        )


def _discard(record: dict[str, Any]) -> None:
    """The sink of a closed audit log."""
