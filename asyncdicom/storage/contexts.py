"""Presentation contexts to propose for sending a set of DICOM instances with C-STORE: the one
proposal policy of ``storescu``, :func:`contexts_for_files` and the C-GET/C-MOVE SCP.

:func:`contexts_for_files` looks at each file's SOP class and transfer syntax (the File Meta
Information and the head of the data set only, nothing is decoded) and returns the
:class:`~asyncdicom.protocol.negotiation.ContextRequest` list to pass to
:meth:`AE.associate(..., contexts=...) <asyncdicom.AE.associate>`:

* one context per (SOP class, transfer syntax) pair found, proposing only that transfer
  syntax, so that a file goes out exactly as stored whichever syntax the acceptor prefers;
* for each SOP class with at least one file that can be converted to an uncompressed syntax,
  one more context proposing Explicit and Implicit VR Little Endian: if the acceptor refuses
  the file's own syntax (say Explicit VR Big Endian, or JPEG 2000),
  :meth:`store() <asyncdicom.services.storage.StorageSCU.store>` converts the file to the
  syntax accepted there (:mod:`asyncdicom.storage.transcoding`).

* with ``allow_lossy=True`` (``storescu --allow-lossy``), for each SOP class with such a file,
  one more context proposing the lossy syntaxes that can be encoded here (JPEG-LS
  near-lossless, JPEG 2000): for an acceptor that takes only lossy syntaxes.  The file's own
  syntax and the uncompressed ones are still preferred when accepted.

An uncompressed file can always be converted; a compressed one (JPEG, JPEG-LS, JPEG 2000,
RLE) when its decoder is installed (``pip install 'asyncdicom[codecs]'``).  Without it a
compressed file gets no fallback and is sent only if the acceptor takes its own syntax.

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
    "context_groups",
    "contexts_for_files",
    "contexts_for_syntaxes",
]

#: the most presentation contexts one A-ASSOCIATE-RQ can propose (PS3.8 9.3.2.2)
MAX_PRESENTATION_CONTEXTS = 128

#: what a file may be converted to when its own syntax is refused
_FALLBACK_SYNTAXES = (uids.EXPLICIT_VR_LITTLE_ENDIAN, uids.IMPLICIT_VR_LITTLE_ENDIAN)
#: ... and, when lossy compression is allowed, to these (when their encoders are installed)
_LOSSY_TARGETS = (uids.JPEG_LS_NEAR_LOSSLESS, uids.JPEG_2000)


def _proposal(pairs: Iterable[tuple[str, str | None]]) -> dict[str, tuple[list[str], bool]]:
    """The policy: per SOP class (in order of first appearance), the transfer syntaxes its
    instances are in (each gets a context of its own) and whether it gets the uncompressed
    fallback context.  A syntax of ``None`` is an instance with no encoding of its own (a
    Dataset): it needs the fallback only."""
    from .transcoding import can_decode

    decodable: dict[str, bool] = {}
    classes: dict[str, tuple[list[str], bool]] = {}
    for sop_class, syntax in pairs:
        own, fallback = classes.get(sop_class, ([], False))
        if syntax is not None and syntax not in own:
            own.append(syntax)
        if not fallback:
            if syntax is None or syntax in uids.UNCOMPRESSED_TRANSFER_SYNTAXES:
                fallback = True
            else:
                if syntax not in decodable:
                    decodable[syntax] = can_decode(syntax)
                fallback = decodable[syntax]
        classes[sop_class] = (own, fallback)
    return classes


def _lossy_targets() -> tuple[str, ...]:
    """The lossy syntaxes an instance can be compressed to here (their encoders installed)."""
    from .transcoding import can_encode

    return tuple(ts for ts in _LOSSY_TARGETS if can_encode(ts))


def context_groups(
    pairs: Iterable[tuple[str, str | None]], *, allow_lossy: bool = False
) -> list[list[ContextRequest]]:
    """The presentation contexts of :func:`contexts_for_syntaxes`, grouped per SOP class (in
    order of first appearance; within a group, the instances' own syntaxes, then the
    fallback), for a sender that spreads the classes over several associations of at most
    :data:`MAX_PRESENTATION_CONTEXTS` contexts, keeping each class whole.  ``None`` as a
    syntax: an instance without an encoding of its own (a Dataset)."""
    groups = []
    lossy = _lossy_targets() if allow_lossy else ()
    for sop_class, (own, fallback) in _proposal(pairs).items():
        group = [ContextRequest(sop_class, (ts,)) for ts in own]
        if fallback:
            group.append(ContextRequest(sop_class, _FALLBACK_SYNTAXES))
            if lossy:
                group.append(ContextRequest(sop_class, lossy))
        groups.append(group)
    return groups


def contexts_for_syntaxes(
    pairs: Iterable[tuple[str, str]], *, allow_lossy: bool = False
) -> list[ContextRequest]:
    """The presentation contexts for instances given as ``(SOP Class UID, Transfer Syntax
    UID)`` pairs (repeats are fine), by the rules of :mod:`asyncdicom.storage.contexts`.

    The order is stable: the pairs' contexts in order of first appearance, then the fallback
    contexts in SOP Class UID order.

    Raises:
        TooManyPresentationContexts: more than 128 contexts are needed.
    """
    pairs = list(pairs)
    classes = _proposal(pairs)
    contexts: list[ContextRequest] = []
    seen: set[tuple[str, str]] = set()
    for sop_class, syntax in pairs:
        if (sop_class, syntax) not in seen:
            seen.add((sop_class, syntax))
            contexts.append(ContextRequest(sop_class, (syntax,)))
    contexts.extend(ContextRequest(c, _FALLBACK_SYNTAXES) for c in sorted(classes) if classes[c][1])
    lossy = _lossy_targets() if allow_lossy else ()
    if lossy:
        contexts.extend(ContextRequest(c, lossy) for c in sorted(classes) if classes[c][1])
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
