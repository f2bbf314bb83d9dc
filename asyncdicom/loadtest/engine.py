"""The load-test engine: many associations, several operations in flight on each, latency
histograms.

A :class:`LoadSpec` says what to do; :class:`LoadGenerator` does it in this process and returns
a :class:`LoadResult`::

    spec = LoadSpec("127.0.0.1", 11112, called_aet="STORESCP", operation="echo",
                    associations=10, window=4, rate=500, duration=5)
    result = await LoadGenerator(spec).run()
    print(result.ops_per_s, result.percentiles(result.latency))

**Associations.**  ``associations`` tasks each hold one association, and open a new one when
the peer closes it (release or abort).  When ``window`` is above 1 the A-ASSOCIATE-RQ proposes
an asynchronous operations window of ``window`` operations invoked; each association then has
as many operations outstanding at once as the peer granted (at most ``window``; one when the
peer ignores the proposal).

**Closed and open loop.**  Without ``rate`` every slot sends its next operation as soon as the
previous one was answered (closed loop: the peer's speed sets the rate).  With ``rate`` the
operations follow a fixed arrival schedule computed from the start time: operation *i* is due at
``start + i / rate``, whether or not the peer kept up.  Its latency is measured from that
*scheduled* time, not from when a slot was free to send it: when the peer is slow, operations
wait for a slot and that wait is part of their latency, so a slow peer shows as high latency
rather than as a lower rate that hides it ("coordinated omission" avoided).  The rate is only
held if ``associations x window`` slots suffice for ``rate x latency`` operations in flight.

**Stop.**  ``count`` operations; or in open loop with ``duration``, the operations due within it,
exactly ``rate x duration`` (:func:`planned_operations`; the smaller with both); or in closed
loop, the operations started within ``duration`` seconds.  Operations in flight then finish.

**Results.**  Operation latency and association setup time (TCP connect to A-ASSOCIATE-AC) go
into HDR histograms (microseconds, 3 significant digits).  Every failure is counted by kind:
``rejected``, ``aborted`` (A-ABORT, A-P-ABORT, connection lost), ``timeout`` (connect, ACSE,
DIMSE, storage commitment report), ``connect`` (connection refused, unreachable),
``no-context``, ``commit-failed`` (a report listing failed instances), ``other``, and each
failure status by its code (``0xA700``).  An association that cannot be opened counts as one
failed operation (the one that was waiting for it).  The run's wall-clock start and a
:class:`Timeline` of the operations finished per tenth of a second let results of runs on
several hosts merge (:func:`asyncdicom.loadtest.merge_runs`).
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
from hdrh.histogram import HdrHistogram
from pydicom.dataset import Dataset

from ..ae import AE
from ..config import Timeouts
from ..errors import (
    AssociationAborted,
    AssociationRejected,
    BenchResultError,
    DICOMError,
    NoAcceptedContext,
    TransportError,
)
from ..protocol import uids
from ..protocol.negotiation import ContextRequest
from ..protocol.pdu import UserIdentityRQSubItem
from ..protocol.status import StatusCategory, category
from ..services import CommitmentRefused, QueryFailed, RetrieveFailed
from ..services.commitment import STORAGE_COMMITMENT, CommitmentTimeout
from ..services.query_retrieve import find_model_uid
from ..services.retrieve import retrieve_model_uid
from ..storage.contexts import contexts_for_files
from ..storage.reader import Part10Source, read_part10_for_send
from .newuids import SOP_INSTANCE_UID, UIDLocations, UIDSource, locate_uids, patch_uids

__all__ = [
    "HIGHEST_MICROSECONDS",
    "TIMELINE_INTERVAL",
    "LoadGenerator",
    "LoadResult",
    "LoadSpec",
    "Operation",
    "RunInfo",
    "Timeline",
    "classify",
    "new_histogram",
    "percentiles",
    "planned_operations",
    "run_load",
]

#: the largest latency a histogram holds (1 hour, in microseconds); longer ones count as this
HIGHEST_MICROSECONDS = 3_600_000_000
#: percentiles reported (key: name in the results)
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
#: the width of a :class:`Timeline`'s buckets, seconds
TIMELINE_INTERVAL = 0.1
#: delay before re-opening an association after a failure that consumed no time (refused)
_RETRY_PAUSE = 0.05


class Operation(str, enum.Enum):
    """The DIMSE operation a load test repeats."""

    ECHO = "echo"
    STORE = "store"
    FIND = "find"
    MOVE = "move"
    COMMIT = "commit"


def new_histogram() -> HdrHistogram:
    """An empty latency histogram: 1 us .. 1 hour, 3 significant digits."""
    return HdrHistogram(1, HIGHEST_MICROSECONDS, 3)


@dataclass(frozen=True)
class LoadSpec:
    """What a load test does (see the module docstring).

    ``operation``: echo, store (``files``), find (``query`` keys, ``model``), move (``query``,
    ``move_destination``, ``model``) or commit (``files``: each operation asks for a commitment
    to all of them and waits up to ``commit_timeout`` s for the report on the same association).
    ``query`` is ``(keyword, value)`` pairs; ``level`` its Query/Retrieve Level.  Give
    ``duration`` or ``count`` (or both: whichever comes first).  ``new_uids``: store every
    instance with fresh Study/Series/SOP Instance UIDs (see :mod:`.newuids`).
    """

    host: str
    port: int
    called_aet: str = "ANY-SCP"
    operation: Operation = Operation.ECHO
    files: tuple[Path, ...] = ()
    associations: int = 1
    window: int = 1
    rate: float | None = None
    duration: float | None = None
    count: int | None = None
    new_uids: bool = False
    query: tuple[tuple[str, str], ...] = ()
    level: str = "STUDY"
    model: str = "study"
    move_destination: str | None = None
    commit_timeout: float = 60.0
    aet: str = "ASYNCDICOM"
    bind: str | None = None
    max_pdu: int = 262144
    timeouts: Timeouts = field(default_factory=Timeouts)
    #: DICOM over TLS: ``tls`` on, with these PEM files (paths, so that worker processes can
    #: build the same context): the CA to trust (default: the system's), our certificate/key
    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: verify that the peer's certificate names the host connected to
    tls_check_hostname: bool = True
    #: the User Identity sent on every association (None: none); a passcode in it reaches the
    #: worker processes through their pipe, never a file or the command line
    user_identity: UserIdentityRQSubItem | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "operation", Operation(self.operation))
        object.__setattr__(self, "files", tuple(Path(f) for f in self.files))
        if self.associations < 1:
            raise ValueError("associations must be at least 1")
        if self.window < 1:
            raise ValueError("window must be at least 1")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError("rate must be a number of operations per second above 0")
        if self.duration is None and self.count is None:
            raise ValueError("give a duration or a count")
        if self.duration is not None and not (math.isfinite(self.duration) and self.duration > 0):
            raise ValueError("duration must be a number of seconds above 0")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be at least 1")
        if self.operation in (Operation.STORE, Operation.COMMIT) and not self.files:
            raise ValueError(f"the {self.operation.value} operation needs files")
        if self.operation is Operation.MOVE and not self.move_destination:
            raise ValueError("the move operation needs a move destination")
        if self.new_uids and self.operation is not Operation.STORE:
            raise ValueError("new UIDs apply to the store operation only")


# ------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class RunInfo:
    """What a result is the result of: the ``operation``, the peers (``(called AE, host,
    port)``, each once), the ``associations`` and the ``processes`` in all, the distinct
    operation ``windows`` asked for, the ``rate`` in all (``None``: closed loop) and how many
    ``runs`` were merged into it (1 for one ``bench`` run, whatever its processes)."""

    operation: str
    peers: tuple[tuple[str, str, int], ...]
    associations: int
    windows: tuple[int, ...]
    rate: float | None
    processes: int = 1
    runs: int = 1

    @classmethod
    def of(cls, spec: LoadSpec, processes: int = 1) -> RunInfo:
        """The description of one run of ``spec`` in ``processes`` processes."""
        return cls(
            operation=spec.operation.value,
            peers=((spec.called_aet, spec.host, spec.port),),
            associations=spec.associations,
            windows=(spec.window,),
            rate=spec.rate,
            processes=processes,
        )

    @classmethod
    def combined(cls, infos: Sequence[RunInfo], *, runs: int) -> RunInfo:
        """The description of ``infos`` going on at once (associations, processes and rates
        added up; their peers and windows together), counting as ``runs`` runs."""
        rates = [i.rate for i in infos]
        return cls(
            operation=infos[0].operation,
            peers=tuple(dict.fromkeys(p for i in infos for p in i.peers)),
            associations=sum(i.associations for i in infos),
            windows=tuple(sorted({w for i in infos for w in i.windows})),
            rate=None if None in rates else sum(r for r in rates if r is not None),
            processes=sum(i.processes for i in infos),
            runs=runs,
        )

    def to_json(self) -> dict[str, Any]:
        """The ``run`` object of ``bench --json``."""
        return {
            "operation": self.operation,
            "peers": [{"called_aet": a, "host": h, "port": p} for a, h, p in self.peers],
            "associations": self.associations,
            "windows": list(self.windows),
            "rate": self.rate,
            "processes": self.processes,
            "runs": self.runs,
        }

    @classmethod
    def from_json(cls, data: Any) -> RunInfo:
        """The description :meth:`to_json` wrote.  Raises ``KeyError``, ``TypeError`` or
        ``ValueError`` when ``data`` is not one."""
        if not isinstance(data, dict) or not isinstance(data["peers"], list):
            raise TypeError("not an object with a list of peers")
        rate = data["rate"]
        return cls(
            operation=Operation(data["operation"]).value,
            peers=tuple(
                (str(p["called_aet"]), str(p["host"]), int(p["port"])) for p in data["peers"]
            ),
            associations=int(data["associations"]),
            windows=tuple(int(w) for w in data["windows"]),
            rate=None if rate is None else float(rate),
            processes=int(data["processes"]),
            runs=int(data["runs"]),
        )


@dataclass
class Timeline:
    """Operations finished (succeeded or failed) and data set bytes sent over a run, per
    ``interval`` seconds: bucket *i* covers seconds [*i* x interval, (*i* + 1) x interval) from
    the run's start (the last one ends with the run).  What lets the rates of runs on several
    hosts be added over the time they have in common (:meth:`rebinned`).  The counts of a
    merged result are fractions: a bucket that straddles the edge of the common time is
    assumed to have run at an even rate within it."""

    interval: float = TIMELINE_INTERVAL
    operations: list[float] = field(default_factory=list)
    bytes: list[float] = field(default_factory=list)

    def record(self, offset: float, operations: int, nbytes: int) -> None:
        """Count ``operations`` finished and ``nbytes`` sent ``offset`` seconds into the run."""
        index = max(0, int(offset / self.interval))
        if index >= len(self.operations):
            grow = index + 1 - len(self.operations)
            self.operations.extend([0] * grow)
            self.bytes.extend([0] * grow)
        self.operations[index] += operations
        self.bytes[index] += nbytes

    def rebinned(
        self, start: float, length: float, origin: float, span: float, interval: float
    ) -> Timeline:
        """This timeline, of a run from time ``start`` lasting ``length`` s, on buckets of
        ``interval`` s from time ``origin`` for ``span`` s (``start`` and ``origin`` on one
        clock): each bucket's counts are spread evenly over the time it covers and added to
        the new buckets that time falls in; what falls outside the new span is dropped."""
        n = math.ceil(round(span / interval, 9)) if span > 0 else 0
        out = Timeline(interval, [0.0] * n, [0.0] * n)
        if n == 0:
            return out
        end, run_end = origin + span, start + length
        for i, (ops, nbytes) in enumerate(zip(self.operations, self.bytes, strict=True)):
            if not ops and not nbytes:
                continue
            lo = start + i * self.interval
            hi = min(start + (i + 1) * self.interval, run_end)
            if hi <= lo:  # counted at the run's very end: a point in time
                if origin <= lo <= end:
                    j = min(n - 1, int((lo - origin) / interval))
                    out.operations[j] += ops
                    out.bytes[j] += nbytes
                continue
            a, z = max(lo, origin), min(hi, end)
            j = max(0, int((a - origin) / interval))
            while a < z and j < n:
                b_lo = origin + j * interval
                b_hi = end if j == n - 1 else min(origin + (j + 1) * interval, end)
                part = min(b_hi, z) - max(b_lo, a)
                if part > 0:
                    out.operations[j] += ops * part / (hi - lo)
                    out.bytes[j] += nbytes * part / (hi - lo)
                if b_hi >= z:
                    break
                j += 1
        return out

    def add(self, other: Timeline) -> None:
        """Add ``other``'s counts, bucket by bucket (the same interval and origin)."""
        for name in ("operations", "bytes"):
            mine: list[float] = getattr(self, name)
            theirs: list[float] = getattr(other, name)
            if len(mine) < len(theirs):
                mine.extend([0] * (len(theirs) - len(mine)))
            for j, value in enumerate(theirs):
                mine[j] += value

    def to_json(self) -> dict[str, Any]:
        """The ``timeline`` object of ``bench --json`` (fractions to 6 decimals)."""
        return {
            "interval_s": self.interval,
            "operations": [_number(v) for v in self.operations],
            "bytes": [_number(v) for v in self.bytes],
        }

    @classmethod
    def from_json(cls, data: Any) -> Timeline:
        """The timeline :meth:`to_json` wrote.  Raises ``KeyError``, ``TypeError`` or
        ``ValueError`` when ``data`` is not one."""
        if not isinstance(data, dict):
            raise TypeError("not an object")
        interval = float(data["interval_s"])
        ops = [float(v) for v in data["operations"]]
        nbytes = [float(v) for v in data["bytes"]]
        values = [interval, *ops, *nbytes]
        if not (interval > 0 and len(ops) == len(nbytes)) or not all(
            math.isfinite(v) and v >= 0 for v in values
        ):
            raise ValueError("an interval above 0 and as many byte as operation counts")
        return cls(interval, ops, nbytes)


def _number(value: float) -> float | int:
    """A count for JSON: a whole number as an int, a fraction to 6 decimals."""
    rounded = round(value, 6)
    return int(rounded) if rounded == int(rounded) else rounded


def percentiles(histogram: HdrHistogram) -> dict[str, float]:
    """p50, p90, p99, p999 and max of a microsecond histogram, in milliseconds (0 when empty)."""
    if histogram.get_total_count() == 0:
        return {**{name: 0.0 for name in PERCENTILES}, "max": 0.0}
    out = {name: histogram.get_value_at_percentile(p) / 1000.0 for name, p in PERCENTILES.items()}
    out["max"] = histogram.get_max_value() / 1000.0
    return out


@dataclass
class LoadResult:
    """The outcome of a load test: counts, rates and the two latency histograms
    (microseconds).  Results of several processes merge with :meth:`merged`, results of runs
    on several hosts with :func:`asyncdicom.loadtest.merge_runs`.

    ``started`` is the wall-clock time (``time.time()``) the run began, ``elapsed`` its length;
    ``timeline`` what finished when, ``run`` what was run (both ``None`` in a result built by
    hand)."""

    operations: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    bytes_sent: int = 0
    latency: HdrHistogram = field(default_factory=new_histogram)
    setup: HdrHistogram = field(default_factory=new_histogram)
    associations_opened: int = 0
    negotiated: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0
    timeline: Timeline | None = None
    run: RunInfo | None = None

    @property
    def errors(self) -> int:
        """Failed operations, all kinds together."""
        return sum(self.errors_by_kind.values())

    @property
    def ops_per_s(self) -> float:
        """Operations (succeeded or not) per second of the run: those its timeline holds (for
        one run, all of them; for runs merged, those of their common time) per second."""
        if self.elapsed <= 0:
            return 0.0
        if self.timeline is not None:
            return sum(self.timeline.operations) / self.elapsed
        return self.operations / self.elapsed

    @property
    def mb_per_s(self) -> float:
        """Data set megabytes (10**6 bytes) sent per second (counted as :attr:`ops_per_s`)."""
        if self.elapsed <= 0:
            return 0.0
        if self.timeline is not None:
            return sum(self.timeline.bytes) / 1e6 / self.elapsed
        return self.bytes_sent / 1e6 / self.elapsed

    def percentiles(self, histogram: HdrHistogram) -> dict[str, float]:
        """See :func:`percentiles`."""
        return percentiles(histogram)

    def summary(self) -> dict[str, Any]:
        """The result as ``bench --json`` writes it: ``operations``, ``errors``,
        ``errors_by_kind``, ``ops_per_s``, ``MB_per_s``, ``latency_ms`` and
        ``association_setup_ms`` ({p50, p90, p99, p999, max}), ``negotiated``; and what a
        merge needs: ``run`` (:class:`RunInfo`), ``started`` and ``ended`` (UTC, ISO 8601),
        ``elapsed_s``, ``bytes_sent``, ``associations_opened``, ``histograms`` (``latency``
        and ``association_setup``, microseconds, HdrHistogram's compressed encoding) and
        ``timeline``.  :meth:`from_summary` reads it back."""
        return {
            "operations": self.operations,
            "errors": self.errors,
            "errors_by_kind": dict(sorted(self.errors_by_kind.items())),
            "ops_per_s": round(self.ops_per_s, 3),
            "MB_per_s": round(self.mb_per_s, 3),
            "latency_ms": percentiles(self.latency),
            "association_setup_ms": percentiles(self.setup),
            "negotiated": self.negotiated,
            "run": None if self.run is None else self.run.to_json(),
            "started": _utc(self.started),
            "ended": _utc(self.started + self.elapsed),
            "elapsed_s": self.elapsed,
            "bytes_sent": self.bytes_sent,
            "associations_opened": self.associations_opened,
            "histograms": {
                "unit": "us",
                "latency": _encode_histogram(self.latency),
                "association_setup": _encode_histogram(self.setup),
            },
            "timeline": None if self.timeline is None else self.timeline.to_json(),
        }

    @classmethod
    def from_summary(cls, data: Any) -> LoadResult:
        """The result :meth:`summary` described (what ``bench --json`` wrote).  Raises
        :class:`~asyncdicom.errors.BenchResultError` when ``data`` is not one, naming what
        is missing or wrong."""
        if not isinstance(data, dict):
            raise BenchResultError("not a JSON object")
        if "histograms" not in data and "latency_ms" in data:
            raise BenchResultError(
                "no histograms: written by a bench that could not merge, run it again"
            )
        key = ""
        try:
            key = "run"
            run = RunInfo.from_json(data["run"])
            key = "started"
            started = _from_utc(data["started"])
            key = "elapsed_s"
            elapsed = float(data["elapsed_s"])
            if not (math.isfinite(elapsed) and elapsed >= 0):
                raise ValueError("not a number of seconds")
            key = "timeline"
            timeline = Timeline.from_json(data["timeline"])
            key = "histograms"
            histograms = data["histograms"]
            if not isinstance(histograms, dict) or histograms.get("unit") != "us":
                raise ValueError("not histograms in microseconds")
            latency = _decode_histogram(histograms["latency"])
            setup = _decode_histogram(histograms["association_setup"])
            key = "errors_by_kind"
            errors_by_kind = {str(k): int(v) for k, v in data["errors_by_kind"].items()}
            counts = []
            for key in ("operations", "bytes_sent", "associations_opened"):
                counts.append(int(data[key]))
                if counts[-1] < 0:
                    raise ValueError("below 0")
            key = "negotiated"
            negotiated = dict(data["negotiated"])
        except KeyError as exc:
            where = f" in {key!r}" if exc.args and exc.args[0] != key else ""
            raise BenchResultError(f"no {exc.args[0]!r}{where}") from None
        except (TypeError, ValueError, AttributeError, IndexError) as exc:
            raise BenchResultError(f"{key!r} is not what bench writes ({exc})") from None
        operations, bytes_sent, associations_opened = counts
        if latency.get_total_count() > operations:
            raise BenchResultError("more latencies recorded than operations")
        return cls(
            operations=operations,
            errors_by_kind=errors_by_kind,
            elapsed=elapsed,
            bytes_sent=bytes_sent,
            latency=latency,
            setup=setup,
            associations_opened=associations_opened,
            negotiated=negotiated,
            started=started,
            timeline=timeline,
            run=run,
        )

    def encode(self) -> dict[str, Any]:
        """A JSON-able form, histograms in HdrHistogram's compressed encoding (to send a
        worker process's result to the parent); :meth:`decode` reverses it."""
        return {
            "operations": self.operations,
            "errors_by_kind": self.errors_by_kind,
            "elapsed": self.elapsed,
            "bytes_sent": self.bytes_sent,
            "latency": _encode_histogram(self.latency),
            "setup": _encode_histogram(self.setup),
            "associations_opened": self.associations_opened,
            "negotiated": self.negotiated,
            "started": self.started,
            "timeline": None if self.timeline is None else self.timeline.to_json(),
            "run": None if self.run is None else self.run.to_json(),
        }

    @classmethod
    def decode(cls, data: dict[str, Any]) -> LoadResult:
        """The result :meth:`encode` encoded."""
        return cls(
            operations=int(data["operations"]),
            errors_by_kind={str(k): int(v) for k, v in data["errors_by_kind"].items()},
            elapsed=float(data["elapsed"]),
            bytes_sent=int(data["bytes_sent"]),
            latency=_decode_histogram(data["latency"]),
            setup=_decode_histogram(data["setup"]),
            associations_opened=int(data["associations_opened"]),
            negotiated=dict(data["negotiated"]),
            started=float(data["started"]),
            timeline=None if data["timeline"] is None else Timeline.from_json(data["timeline"]),
            run=None if data["run"] is None else RunInfo.from_json(data["run"]),
        )

    @classmethod
    def merged(cls, results: Sequence[LoadResult]) -> LoadResult:
        """One result for the parts of one run (its worker processes): counts and histograms
        added, the time from the first start to the last end (the longest elapsed time when
        they started together), the timelines added over it, the first negotiated
        parameters, the associations, processes and rates added up."""
        out = cls()
        if results:
            out.started = min(r.started for r in results)
            end = max(r.started + r.elapsed for r in results)
            out.elapsed = end - out.started
            if all(r.timeline is not None for r in results):
                out.timeline = add_timelines(results, out.started, out.elapsed)
            infos = [r.run for r in results if r.run is not None]
            if len(infos) == len(results):
                out.run = RunInfo.combined(infos, runs=max(i.runs for i in infos))
        out.add_counts(results)
        return out

    def add_counts(self, results: Sequence[LoadResult]) -> None:
        """Add the counts, errors per kind, bytes, associations and latency histograms of
        ``results`` to this result's (the window and rates are the caller's)."""
        for r in results:
            self.operations += r.operations
            for kind, n in r.errors_by_kind.items():
                self.errors_by_kind[kind] = self.errors_by_kind.get(kind, 0) + n
            self.bytes_sent += r.bytes_sent
            self.latency.add(r.latency)
            self.setup.add(r.setup)
            self.associations_opened += r.associations_opened
            self.negotiated = self.negotiated or r.negotiated


def add_timelines(results: Sequence[LoadResult], origin: float, span: float) -> Timeline:
    """The timelines of ``results`` (each with one) added over ``span`` seconds from
    wall-clock time ``origin``, in buckets of the finest interval among them."""
    interval = min(r.timeline.interval for r in results if r.timeline is not None)
    out = Timeline(interval)
    for r in results:
        assert r.timeline is not None
        out.add(r.timeline.rebinned(r.started, r.elapsed, origin, span, interval))
    if not out.operations:  # an empty span
        out = Timeline(interval, [], [])
    return out


def _utc(seconds: float) -> str:
    """Wall-clock ``seconds`` (since the epoch) as UTC in ISO 8601, to the microsecond."""
    when = datetime.fromtimestamp(seconds, timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _from_utc(text: Any) -> float:
    """:func:`_utc`'s text back to seconds since the epoch.  Raises ``ValueError``."""
    if not isinstance(text, str):
        raise ValueError("not a date and time")
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError("no time zone")
    return when.timestamp()


def _encode_histogram(h: HdrHistogram) -> str:
    if h.get_total_count() == 0:
        return ""
    encoded: bytes = h.encode()
    return encoded.decode("ascii")


def _decode_histogram(text: str) -> HdrHistogram:
    """Raises ``ValueError``/``TypeError`` for text that is no histogram of ours."""
    out = new_histogram()
    if not isinstance(text, str):
        raise TypeError("a histogram is encoded as text")
    if text:
        try:
            out.add(HdrHistogram.decode(text.encode("ascii")))
        except (ValueError, TypeError):
            raise
        except Exception as exc:  # hdrh's own errors: a bad cookie, zlib, an index error
            raise ValueError(f"not an encoded histogram: {exc}") from None
    return out


def classify(exc: BaseException) -> str:
    """The error kind of an exception that failed an operation or an association."""
    if isinstance(exc, AssociationRejected):
        return "rejected"
    if isinstance(exc, (QueryFailed, RetrieveFailed, CommitmentRefused)):
        return f"0x{exc.response.status:04X}"
    if isinstance(exc, (TimeoutError, CommitmentTimeout)):
        return "timeout"
    if isinstance(exc, AssociationAborted):
        return "aborted"
    if isinstance(exc, TransportError):
        return "connect"
    if isinstance(exc, NoAcceptedContext):
        return "no-context"
    return "other"


# ------------------------------------------------------------------------------------ schedule


@dataclass(frozen=True, slots=True)
class _Ticket:
    """One operation to do: its number and when it is due (closed loop: when it was taken)."""

    index: int
    due: float


def planned_operations(rate: float, duration: float) -> int:
    """The operations an open-loop run of ``rate`` per second for ``duration`` seconds does:
    those due within the duration (operation *i* is due at *i* / rate), ``rate x duration``
    when that is a whole number, one more otherwise; at least 1.  Computed once, not by
    comparing clock readings, so that rounding cannot add or drop one."""
    return max(1, math.ceil(round(rate * duration, 6)))


class _Schedule:
    """Hands out the operations: at once (closed loop) or at their scheduled time (open).

    An open-loop run with a duration does exactly :func:`planned_operations` operations (or
    ``count``, if fewer); a closed-loop one starts operations until the duration is over."""

    def __init__(self, spec: LoadSpec, start: float, offset: float = 0.0) -> None:
        self.rate = spec.rate
        self.count = spec.count
        self.start = start
        self.end = math.inf if spec.duration is None else start + spec.duration
        if spec.rate is not None and spec.duration is not None:
            planned = planned_operations(spec.rate, spec.duration)
            self.count = planned if self.count is None else min(self.count, planned)
            self.end = math.inf
        self.offset = offset
        self.issued = 0
        #: tickets given back by a slot whose association went away before sending
        self.returned: list[_Ticket] = []

    @property
    def exhausted(self) -> bool:
        if self.returned:
            return False
        if self.count is not None and self.issued >= self.count:
            return True
        if self.rate is not None:
            return False  # an open-loop run always has a count (see __init__)
        return anyio.current_time() >= self.end

    def _due(self, index: int) -> float:
        assert self.rate is not None
        return self.start + self.offset + index / self.rate

    async def take(self) -> _Ticket | None:
        if self.returned:
            return self.returned.pop()
        if self.exhausted:
            return None
        index = self.issued
        self.issued += 1
        if self.rate is None:
            return _Ticket(index, anyio.current_time())
        due = self._due(index)
        if due > anyio.current_time():
            await anyio.sleep_until(due)
        return _Ticket(index, due)


# ------------------------------------------------------------------------------------ engine


@dataclass(frozen=True, slots=True)
class _Instance:
    source: Part10Source
    where: UIDLocations | None


class LoadGenerator:
    """Runs one :class:`LoadSpec` in this process (see the module docstring).

    While :meth:`run` runs, :attr:`operations` and :attr:`errors` count what is done so far
    (for a progress display).
    """

    def __init__(self, spec: LoadSpec, *, schedule_offset: float = 0.0) -> None:
        self.spec = spec
        self.result = LoadResult(timeline=Timeline(), run=RunInfo.of(spec))
        self._begin = 0.0
        self._offset = schedule_offset
        self._instances: list[_Instance] = []
        self._new_uids = UIDSource()
        self._contexts: list[ContextRequest | str] = []
        self._identifier: Dataset | None = None
        self._schedule: _Schedule | None = None
        ssl_context = None
        if spec.tls:
            from ..transport import client_context

            ssl_context = client_context(
                ca=spec.tls_ca,
                cert=spec.tls_cert,
                key=spec.tls_key,
                check_hostname=spec.tls_check_hostname,
            )
        self._ae = AE(
            spec.aet,
            max_pdu_length=spec.max_pdu,
            timeouts=spec.timeouts,
            client_ssl_context=ssl_context,
            user_identity=spec.user_identity,
        )
        self._prepared = False

    @property
    def operations(self) -> int:
        """Operations finished so far (succeeded or failed)."""
        return self.result.operations

    @property
    def errors(self) -> int:
        """Failed operations so far."""
        return self.result.errors

    def prepare(self) -> None:
        """Read the files (headers and data sets, kept in memory) and build the contexts and
        the query; :meth:`run` calls it if needed.  Blocking (call it in a worker thread from
        async code).  Raises ``InvalidDicomFile`` / ``OSError`` for a file that cannot be sent
        and :class:`~.newuids.UIDPatchError` when its UIDs cannot be replaced."""
        if self._prepared:
            return
        spec = self.spec
        op = spec.operation
        if op in (Operation.STORE, Operation.COMMIT):
            for path in spec.files:
                source = read_part10_for_send(path, read_limit=1 << 62)
                where = None
                if spec.new_uids:
                    assert source.data is not None
                    where = locate_uids(source.data, source.transfer_syntax_uid)
                self._instances.append(_Instance(source, where))
        if op is Operation.ECHO:
            self._contexts = [uids.VERIFICATION]
        elif op is Operation.STORE:
            self._contexts = list(contexts_for_files([i.source for i in self._instances]))
        elif op is Operation.COMMIT:
            self._contexts = [STORAGE_COMMITMENT]
        else:
            ds = Dataset()
            ds.QueryRetrieveLevel = spec.level
            for keyword, value in spec.query:
                setattr(ds, keyword, value)
            self._identifier = ds
            if op is Operation.FIND:
                self._contexts = [find_model_uid(spec.model)]
            else:
                self._contexts = [retrieve_model_uid(spec.model, "move")]
        self._prepared = True

    async def run(self, *, start: float | None = None) -> LoadResult:
        """Run the load test and return its result.  ``start`` (the loop clock, as
        ``anyio.current_time()``) is when the schedule begins (default: now)."""
        if not self._prepared:
            await anyio.to_thread.run_sync(self.prepare)
        if start is not None and start > anyio.current_time():
            await anyio.sleep_until(start)
        now = anyio.current_time()
        begin = now if start is None else start
        self._begin = begin
        self.result.started = time.time() - (now - begin)
        self._schedule = _Schedule(self.spec, begin, self._offset)
        async with anyio.create_task_group() as tg:
            for _ in range(self.spec.associations):
                tg.start_soon(self._association_task)
        self.result.elapsed = anyio.current_time() - begin
        return self.result

    # -------------------------------------------------------------------------- internals

    def _finished(self, nbytes: int) -> None:
        """Count an operation (succeeded or failed) that just finished."""
        self.result.operations += 1
        self.result.bytes_sent += nbytes
        assert self.result.timeline is not None
        self.result.timeline.record(anyio.current_time() - self._begin, 1, nbytes)

    def _fail(self, kind: str) -> None:
        self._finished(0)
        self.result.errors_by_kind[kind] = self.result.errors_by_kind.get(kind, 0) + 1

    async def _association_task(self) -> None:
        spec = self.spec
        schedule = self._schedule
        assert schedule is not None
        window = (spec.window, 1) if spec.window > 1 else None
        while True:
            ticket = await schedule.take()
            if ticket is None:
                return
            opened = anyio.current_time()
            established = False
            try:
                async with self._ae.associate(
                    spec.host,
                    spec.port,
                    called_aet=spec.called_aet,
                    contexts=self._contexts,
                    bind=spec.bind,
                    async_ops_window=window,
                ) as assoc:
                    established = True
                    self.result.associations_opened += 1
                    self.result.setup.record_value(_microseconds(anyio.current_time() - opened))
                    self._note_negotiated(assoc)
                    await self._run_slots(assoc, ticket)
            except DICOMError as exc:
                if not established:
                    self._fail(classify(exc))  # the ticket that waited for this association
                    if anyio.current_time() - opened < _RETRY_PAUSE:
                        await anyio.sleep(_RETRY_PAUSE)
                # else: the operations that failed with it are counted; re-open
            except OSError as exc:  # a local resource problem (too many open files, ...)
                if not established:
                    self._fail(classify(exc))
                    await anyio.sleep(_RETRY_PAUSE)

    def _note_negotiated(self, assoc: Any) -> None:
        if self.result.negotiated:
            return
        n = assoc.negotiated
        self.result.negotiated = {
            "peer_max_pdu_length": n.peer_max_pdu_length,
            "local_max_pdu_length": n.local_max_pdu_length,
            "max_operations_invoked": n.max_operations_invoked,
            "max_operations_performed": n.max_operations_performed,
            "operations_outstanding": self._slots(assoc),
            "peer_implementation_class_uid": n.peer_implementation_class_uid,
            "peer_implementation_version_name": n.peer_implementation_version_name,
            "accepted_contexts": [
                {"abstract_syntax": c.abstract_syntax, "transfer_syntax": c.transfer_syntax}
                for c in assoc.accepted_contexts
            ],
        }

    def _slots(self, assoc: Any) -> int:
        granted = int(assoc.negotiated.max_operations_invoked)
        return self.spec.window if granted == 0 else min(self.spec.window, granted)

    async def _run_slots(self, assoc: Any, first: _Ticket) -> None:
        async with anyio.create_task_group() as tg:
            for n in range(self._slots(assoc)):
                tg.start_soon(self._slot, assoc, first if n == 0 else None)

    async def _slot(self, assoc: Any, ticket: _Ticket | None) -> None:
        schedule = self._schedule
        assert schedule is not None
        while True:
            if ticket is None:
                ticket = await schedule.take()
                if ticket is None:
                    return
            if not assoc.is_established:
                schedule.returned.append(ticket)  # for the next association
                return
            try:
                sent = await self._operation(assoc, ticket)
            except DICOMError as exc:
                self._fail(classify(exc))
                if not assoc.is_established:
                    return
            except _StatusFailure as exc:
                self._fail(exc.kind)
            else:
                self._finished(sent)
                self.result.latency.record_value(_microseconds(anyio.current_time() - ticket.due))
            ticket = None

    async def _operation(self, assoc: Any, ticket: _Ticket) -> int:
        """Do one operation; the data set bytes sent.  Raises :class:`_StatusFailure` for a
        failure status, DICOMError for the rest."""
        op = self.spec.operation
        if op is Operation.ECHO:
            _check((await assoc.echo()).status)
            return 0
        if op is Operation.STORE:
            copy, index = divmod(ticket.index, len(self._instances))
            instance = self._instances[index]
            source = instance.source
            if instance.where is not None:
                assert source.data is not None
                new = self._new_uids.new_uids(instance.where, index, copy)
                data = patch_uids(source.data, instance.where, new)
                source = replace(source, sop_instance_uid=new[SOP_INSTANCE_UID], data=data)
            _check((await assoc.store(source)).status)
            return source.dataset_length if source.data is None else len(source.data)
        if op is Operation.FIND:
            assert self._identifier is not None
            async with assoc.find(self._identifier, model=self.spec.model) as results:
                async for _match in results:
                    pass
            return 0
        if op is Operation.MOVE:
            assert self._identifier is not None and self.spec.move_destination
            async with assoc.move(
                self._identifier, destination=self.spec.move_destination, model=self.spec.model
            ) as retrieval:
                await retrieval.wait()
            return 0
        refs = [(i.source.sop_class_uid, i.source.sop_instance_uid) for i in self._instances]
        result = await assoc.commit(refs, timeout=self.spec.commit_timeout)
        if not result.ok:
            raise _StatusFailure("commit-failed")
        return 0


class _StatusFailure(Exception):
    def __init__(self, kind: str) -> None:
        self.kind = kind


def _check(status: int) -> None:
    try:
        ok = category(status) in (StatusCategory.SUCCESS, StatusCategory.WARNING)
    except ValueError:
        ok = False
    if not ok:
        raise _StatusFailure(f"0x{status:04X}")


def _microseconds(seconds: float) -> int:
    return min(HIGHEST_MICROSECONDS, max(1, round(seconds * 1e6)))


async def run_load(spec: LoadSpec) -> LoadResult:
    """Run ``spec`` in this process (:class:`LoadGenerator`) and return the result."""
    return await LoadGenerator(spec).run()
