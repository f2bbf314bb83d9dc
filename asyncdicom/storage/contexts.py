"""Presentation contexts to propose for sending a set of DICOM files with C-STORE.

:func:`contexts_for_files` looks at each file's SOP class and transfer syntax (the File Meta
Information and the head of the data set only, nothing is decoded) and returns the
:class:`~asyncdicom.protocol.negotiation.ContextRequest` list to pass to
:meth:`AE.associate(..., contexts=...) <asyncdicom.AE.associate>`:

* one context per (SOP class, transfer syntax) pair found, proposing only that transfer
  syntax, so that a file goes out exactly as stored whichever syntax the acceptor prefers;
* for each SOP class with at least one uncompressed file, one more context proposing Explicit
  and Implicit VR Little Endian: if the acceptor refuses the file's own syntax (say Explicit VR
  Big Endian), :meth:`store() <asyncdicom.services.storage.StorageSCU.store>` converts the file
  to the syntax accepted there.

A compressed file (JPEG, JPEG 2000, RLE, ...) gets no such fallback: this library does not
decompress, so it can only be sent if the acceptor takes its own syntax.

One association carries at most 128 presentation contexts (PS3.8 9.3.2.2: odd context IDs 1 to
255); a set of files needing more raises :class:`TooManyPresentationContexts`.  Send such a set
in several batches, each on its own association.

Example::

    from asyncdicom import AE, contexts_for_files

    files = sorted(Path("study").glob("*.dcm"))
    async with AE("SCU").associate(host, port, contexts=contexts_for_files(files)) as assoc:
        for path in files:
            await assoc.store(path)
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..errors import TooManyPresentationContexts
from ..protocol import uids
from ..protocol.negotiation import ContextRequest
from .reader import Part10Source, read_part10_for_send

__all__ = [
    "MAX_PRESENTATION_CONTEXTS",
    "TooManyPresentationContexts",
    "contexts_for_files",
    "contexts_for_syntaxes",
]

#: the most presentation contexts one A-ASSOCIATE-RQ can propose (PS3.8 9.3.2.2)
MAX_PRESENTATION_CONTEXTS = 128

#: what an uncompressed file may be converted to when its own syntax is refused
_FALLBACK_SYNTAXES = (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN)


def contexts_for_syntaxes(pairs: Iterable[tuple[str, str]]) -> list[ContextRequest]:
    """The presentation contexts for instances given as ``(SOP Class UID, Transfer Syntax
    UID)`` pairs (repeats are fine), by the rules of :mod:`asyncdicom.storage.contexts`.

    The order is stable: the pairs' contexts in order of first appearance, then the fallback
    contexts in SOP Class UID order.

    Raises:
        TooManyPresentationContexts: more than 128 contexts are needed.
    """
    contexts: list[ContextRequest] = []
    seen: set[tuple[str, str]] = set()
    fallback: set[str] = set()
    for sop_class, syntax in pairs:
        key = (sop_class, syntax)
        if key not in seen:
            seen.add(key)
            contexts.append(ContextRequest(sop_class, (syntax,)))
        if syntax in uids.UNCOMPRESSED_TRANSFER_SYNTAXES:
            fallback.add(sop_class)
    contexts.extend(ContextRequest(c, _FALLBACK_SYNTAXES) for c in sorted(fallback))
    if len(contexts) > MAX_PRESENTATION_CONTEXTS:
        raise TooManyPresentationContexts(len(contexts))
    return contexts


def contexts_for_files(
    files: Iterable[str | os.PathLike[str] | Part10Source],
) -> list[ContextRequest]:
    """The presentation contexts to propose for sending ``files`` with C-STORE.

    ``files`` are paths of DICOM files, or :class:`~asyncdicom.storage.reader.Part10Source`
    objects already located with :func:`~asyncdicom.storage.reader.read_part10_for_send` (then
    nothing is read again).  For a path only the header is read.  See the module documentation
    for the contexts proposed.

    Raises:
        TooManyPresentationContexts: more than 128 contexts are needed.
        InvalidDicomFile: a file is not DICOM.
        OSError: a file cannot be read.
    """
    return contexts_for_syntaxes(
        (source.sop_class_uid, source.transfer_syntax_uid)
        for source in (f if isinstance(f, Part10Source) else read_part10_for_send(f) for f in files)
    )
