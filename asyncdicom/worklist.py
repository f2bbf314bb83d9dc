"""A Modality Worklist SCP (PS3.4 K.6.1): C-FIND on worklist items held in files or in code.

:class:`Worklist` holds worklist items -- one data set per scheduled procedure step, with the
patient, the requested procedure and the Scheduled Procedure Step Sequence -- read from a
folder of DICOM files (``.wl`` or ``.dcm``, the files DCMTK's ``wlmscpfs`` serves, made for
instance with ``dump2dcm``) and/or added in code, and answers the C-FIND requests of the
Modality Worklist Information Model FIND SOP class with the items that match::

    worklist = Worklist("/data/worklist")
    worklist.add(item)                     # a pydicom Dataset, kept besides the folder's
    worklist.install(ae)                   # the C-FIND handler, and the SOP class accepted
    await ae.serve("0.0.0.0", 11112)

Matching follows :func:`asyncdicom.qr.matching.parse_worklist_query` (the rules of PS3.4
C.2.2.2: wild cards on Scheduled Station AE Title, Patient's Name ..., date and time ranges on
the Scheduled Procedure Step Start Date and Time, sequence matching in the Scheduled Procedure
Step Sequence).  Each response carries the requested keys only, with the item's values (a
zero-length value where the item has none), and the item's Specific Character Set.  A query
that cannot be answered gets the standard's failure status with an Error Comment: 0xA900
(Identifier does not match SOP class: a sequence key sent as a value or the reverse), 0xC000
(Unable to process: a malformed or reversed date range, a sequence key with several items, an
identifier that cannot be decoded).

**The folder is read again at each query**, as far as it changed: the files are listed and
looked at (``stat``), and only a file that is new or changed since the last query (another
modification time, size, inode or status change time) is parsed again; a removed file drops
its item.  A query thus always sees the folder as it is -- a RIS gateway writing a file (best
by writing a temporary name and renaming it) is seen by the next query, without a watcher
thread and whatever the file system (network file systems deliver no change events) -- at the
cost of one ``stat`` per file per query, which is small for the tens to thousands of items of a
worklist.  The folder's subfolders are read too (``wlmscpfs`` keeps one per AE title; every
item is served whatever the called AE title).  Names starting with a dot are ignored.  A file
that cannot be read is logged once (until it changes) and skipped.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .ae import AE
from .log import get_logger
from .protocol import messages
from .protocol.status import Status
from .protocol.uids import MODALITY_WORKLIST_FIND
from .qr.matching import Query, QueryError, parse_worklist_query
from .qr.wire import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    WIRE_SYNTAXES,
    Element,
    ResponseEncoder,
    SlowPath,
    parse_explicit_le,
)
from .services.base import make_response
from .services.query_retrieve import MWL_FIND_SERVICE
from .storage.codec import encode_dataset

__all__ = ["WORKLIST_SUFFIXES", "Worklist"]

#: the file name endings read from a worklist folder (compared case-insensitively)
WORKLIST_SUFFIXES = (".wl", ".dcm")

SPECIFIC_CHARACTER_SET = 0x00080005

# the worklist service, accepted by an AE it is added to (Worklist.install)
_MWL_ACCEPTED = dataclasses.replace(MWL_FIND_SERVICE, accept_by_default=True)


@dataclasses.dataclass
class _File:
    """What was read from one file, and the ``stat`` facts it was read at."""

    stamp: tuple[int, int, int, int]
    item: Dataset | None  # None: unreadable


class Worklist:
    """Worklist items for the Modality Worklist FIND SOP class (see the module docstring).

    ``folder`` (optional) is read at each query as far as it changed; ``items`` are data sets
    to serve besides (copied); ``pn_case_insensitive`` makes Person Name matching
    case-insensitive (the default is case-sensitive, as PS3.4).  Thread-safe: C-FIND requests
    are answered in worker threads, several at a time.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str] | None = None,
        items: Iterable[Dataset] = (),
        *,
        pn_case_insensitive: bool = False,
    ) -> None:
        #: the folder of worklist files (None: items added in code only)
        self.folder = Path(folder) if folder is not None else None
        self.pn_case_insensitive = pn_case_insensitive
        self.log = get_logger(worklist=str(self.folder) if self.folder is not None else None)
        self._lock = threading.Lock()
        self._added: list[Dataset] = []
        self._files: dict[Path, _File] = {}
        # id(item) -> (the item, its encoded elements by character set): see _elements
        self._encoded: dict[int, tuple[Dataset, dict[str | None, dict[int, Element]]]] = {}
        for item in items:
            self.add(item)

    # -- the items ---------------------------------------------------------------------------

    def add(self, item: Dataset) -> None:
        """Serve ``item`` (a copy of it) besides the folder's items."""
        if not isinstance(item, Dataset):
            raise TypeError(f"a worklist item is a pydicom Dataset, not {type(item).__name__}")
        kept = copy.deepcopy(item)
        _decode_all(kept)
        with self._lock:
            self._added.append(kept)

    def clear(self) -> None:
        """Forget the items added in code (the folder's stay)."""
        with self._lock:
            self._added.clear()
            self._encoded.clear()

    def items(self) -> list[Dataset]:
        """Every item now: those added in code, then the folder's (read again as far as it
        changed), in file name order.  The data sets are shared: do not change them."""
        with self._lock:
            if self.folder is not None:
                self._refresh(self.folder)
            return self._added + [f.item for f in self._files.values() if f.item is not None]

    def find(self, identifier: Dataset) -> Iterator[Dataset]:
        """The response identifiers of the items that match the query ``identifier``, in the
        order of :meth:`items`.  Raises :class:`~asyncdicom.qr.QueryError` (its ``status``
        is the failure status to answer) for a query the model cannot answer."""
        query = parse_worklist_query(identifier, pn_case_insensitive=self.pn_case_insensitive)
        for item in self.items():
            if query.matches(item):
                yield query.response(item)

    def install(self, ae: AE) -> None:
        """Register the C-FIND handler of the Modality Worklist FIND SOP class on ``ae`` and
        make it accept the SOP class (with the default transfer syntaxes) unless its
        ``supported_contexts`` list it already."""
        ae.add_service(_MWL_ACCEPTED)
        ae.on("C-FIND", sop_class=MODALITY_WORKLIST_FIND)(self._on_find)

    # -- the handler -------------------------------------------------------------------------

    def _on_find(self, request: Any) -> Iterator[Any]:
        """C-FIND (a plain generator: runs in a worker thread): each matching item's identifier
        encoded straight into the context's transfer syntax when it is Implicit or Explicit
        VR Little Endian (:mod:`asyncdicom.qr.wire`; the item's elements are encoded once and
        kept), a pydicom data set otherwise."""
        try:
            identifier = request.decode()
            query = parse_worklist_query(identifier, pn_case_insensitive=self.pn_case_insensitive)
        except QueryError as exc:
            request.association.log.info("worklist_query_refused", status=f"0x{exc.status:04X}")
            yield make_response(
                request.message,
                exc.status,
                error_comment=exc.error_comment,
                offending_element=(exc.tag,) if exc.tag is not None else None,
            )
            return
        except Exception as exc:  # an identifier pydicom cannot decode
            request.association.log.warning(
                "identifier_undecodable", message=request.message.NAME, error=str(exc)
            )
            yield _failure(request.message, "the identifier cannot be decoded")
            return
        syntax = request.context.transfer_syntax or ""
        encoder = ResponseEncoder(query, syntax) if syntax in WIRE_SYNTAXES else None
        count = 0
        for item in self.items():
            if not query.matches(item):
                continue
            count += 1
            if encoder is not None:
                try:
                    yield encoder.encode(self._elements(item, query), item)
                    continue
                except SlowPath:
                    pass
            yield query.response(item)
        request.association.log.info("worklist_query", matches=count)

    def _elements(self, item: Dataset, query: Query) -> dict[int, Element]:
        """``item``'s elements encoded (Explicit VR Little Endian, by pydicom, once per item
        and character set), as :class:`~asyncdicom.qr.wire.ResponseEncoder` copies them; the
        character set is the one of the response (the item's, else the request's)."""
        own = item.get(SPECIFIC_CHARACTER_SET)
        charset = own if own is not None else query.identifier.get(SPECIFIC_CHARACTER_SET)
        key = None if charset is None else repr(charset.value)
        with self._lock:
            cached = self._encoded.get(id(item))
            if cached is None or cached[0] is not item:
                cached = (item, {})
                self._encoded[id(item)] = cached
            elements = cached[1].get(key)
        if elements is not None:
            return elements
        ds = Dataset()
        for elem in item:
            ds.add(elem)
        if charset is not None:
            ds.add(charset)
        try:
            encoded = encode_dataset(ds, EXPLICIT_VR_LITTLE_ENDIAN)
        except Exception as exc:  # a value pydicom cannot encode: the response will tell
            raise SlowPath(f"the item cannot be encoded: {exc}") from None
        elements = parse_explicit_le(encoded)
        if own is None:
            elements.pop(SPECIFIC_CHARACTER_SET, None)  # the request's: not the item's own
        with self._lock:
            cached[1][key] = elements
        return elements

    # -- the folder --------------------------------------------------------------------------

    def _refresh(self, folder: Path) -> None:
        """Bring ``_files`` up to date with ``folder`` (called with the lock held)."""
        seen: dict[Path, _File] = {}
        for path in _worklist_files(folder):
            try:
                st = path.stat()
            except OSError:
                continue  # removed meanwhile
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
            known = self._files.get(path)
            if known is not None and known.stamp == stamp:
                seen[path] = known
                continue
            seen[path] = _File(stamp, self._read(path))
        if seen.keys() != self._files.keys() or any(seen[p] is not self._files[p] for p in seen):
            current = {id(f.item) for f in seen.values()} | {id(i) for i in self._added}
            for gone in self._encoded.keys() - current:
                del self._encoded[gone]
        self._files = seen

    def _read(self, path: Path) -> Dataset | None:
        try:
            ds = dcmread(path)  # a Part 10 file (preamble and "DICM"), as dump2dcm writes
            item = Dataset()
            for elem in ds:
                item.add(elem)
            _decode_all(item)
            if len(item) == 0:
                raise ValueError("no data elements")
        except InvalidDicomError:
            # (pydicom's text advises force=True, which is not something a user can give)
            self._skipped(path, "not a DICOM file (no File Meta Information after 'DICM')")
            return None
        except Exception as exc:
            self._skipped(path, f"cannot be read: {exc}")
            return None
        return item

    def _skipped(self, path: Path, reason: str) -> None:
        self.log.warning("worklist_file_skipped", file=str(path), error=reason)


def _decode_all(ds: Dataset) -> None:
    """Convert every raw element now (pydicom converts them at first access, which would
    change the data set while several threads match it)."""
    for elem in ds.iterall():
        _ = elem.value


def _worklist_files(folder: Path) -> list[Path]:
    out: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(WORKLIST_SUFFIXES):
                out.append(Path(root, name))
    return out


def _failure(request: messages.RequestMessage, comment: str) -> messages.ResponseMessage:
    return make_response(request, int(Status.UNABLE_TO_PROCESS), error_comment=comment)
