"""Presentation-context presets: what to propose (requestor) or accept (acceptor).

A requestor may propose at most 128 presentation contexts (PS3.8 9.3.2.2: odd IDs 1-255), so
"every storage SOP class" (about 170 known to pydicom) only fits as an *acceptor*
configuration (:func:`storage_supported`); as a requestor propose what you will send
(:func:`contexts_for`, or :data:`COMMON_STORAGE`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .config import DEFAULT_TRANSFER_SYNTAXES
from .protocol import uids
from .protocol.negotiation import ContextRequest, SupportedContext

__all__ = [
    "COMMON_STORAGE",
    "QR_FIND",
    "QR_GET",
    "QR_MOVE",
    "STORAGE_COMMITMENT",
    "VERIFICATION",
    "contexts_for",
    "mpps_supported",
    "qr_find_supported",
    "qr_supported",
    "retrieve_contexts",
    "retrieve_contexts_for_syntaxes",
    "storage_commitment_scp_supported",
    "storage_commitment_scu_supported",
    "storage_supported",
    "worklist_supported",
]

#: Verification (C-ECHO)
VERIFICATION: tuple[ContextRequest, ...] = (
    ContextRequest(uids.VERIFICATION, DEFAULT_TRANSFER_SYNTAXES),
)

#: Query/Retrieve information models (PS3.4 C.6): Patient Root, Study Root, Patient/Study Only
QR_FIND: tuple[str, ...] = (
    uids.PATIENT_ROOT_QR_FIND,
    uids.STUDY_ROOT_QR_FIND,
    uids.PATIENT_STUDY_ONLY_QR_FIND,
)
QR_MOVE: tuple[str, ...] = (
    uids.PATIENT_ROOT_QR_MOVE,
    uids.STUDY_ROOT_QR_MOVE,
    uids.PATIENT_STUDY_ONLY_QR_MOVE,
)
QR_GET: tuple[str, ...] = (
    uids.PATIENT_ROOT_QR_GET,
    uids.STUDY_ROOT_QR_GET,
    uids.PATIENT_STUDY_ONLY_QR_GET,
)

#: the storage SOP classes modalities and PACS exchange most (fits one A-ASSOCIATE-RQ)
COMMON_STORAGE: tuple[str, ...] = (
    uids.COMPUTED_RADIOGRAPHY_IMAGE_STORAGE,
    uids.DIGITAL_XRAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids.DIGITAL_MAMMOGRAPHY_XRAY_IMAGE_STORAGE_FOR_PRESENTATION,
    uids.CT_IMAGE_STORAGE,
    uids.ENHANCED_CT_IMAGE_STORAGE,
    uids.MR_IMAGE_STORAGE,
    uids.ENHANCED_MR_IMAGE_STORAGE,
    uids.ULTRASOUND_IMAGE_STORAGE,
    uids.ULTRASOUND_MULTIFRAME_IMAGE_STORAGE,
    uids.SECONDARY_CAPTURE_IMAGE_STORAGE,
    uids.XRAY_ANGIOGRAPHIC_IMAGE_STORAGE,
    uids.NUCLEAR_MEDICINE_IMAGE_STORAGE,
    uids.POSITRON_EMISSION_TOMOGRAPHY_IMAGE_STORAGE,
    uids.GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_STORAGE,
    uids.BASIC_TEXT_SR_STORAGE,
    uids.ENHANCED_SR_STORAGE,
    uids.COMPREHENSIVE_SR_STORAGE,
    uids.KEY_OBJECT_SELECTION_DOCUMENT_STORAGE,
    uids.ENCAPSULATED_PDF_STORAGE,
    uids.SEGMENTATION_STORAGE,
    uids.RT_IMAGE_STORAGE,
    uids.RT_DOSE_STORAGE,
    uids.RT_STRUCTURE_SET_STORAGE,
    uids.RT_PLAN_STORAGE,
)


def contexts_for(
    sop_classes: Iterable[str],
    transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
    *,
    scu_role: bool | None = None,
    scp_role: bool | None = None,
) -> list[ContextRequest]:
    """One :class:`ContextRequest` per SOP class (duplicates dropped, order kept), each with
    ``transfer_syntaxes``; raises ValueError beyond the 128 contexts an A-ASSOCIATE-RQ holds."""
    seen: dict[str, None] = dict.fromkeys(sop_classes)
    if len(seen) > 128:
        raise ValueError(f"{len(seen)} SOP classes: an association proposes 128 contexts at most")
    return [
        ContextRequest(uid, tuple(transfer_syntaxes), scu_role=scu_role, scp_role=scp_role)
        for uid in seen
    ]


def storage_supported(
    transfer_syntaxes: Sequence[str] = uids.ALL_TRANSFER_SYNTAXES,
    *,
    scu_role: bool = False,
) -> tuple[SupportedContext, ...]:
    """Acceptor: every storage SOP class known to pydicom, in ``transfer_syntaxes`` (for
    ``AEConfig.supported_contexts``; ``accept_any_storage=True`` does the same for any UID)."""
    return tuple(
        SupportedContext(uid, tuple(transfer_syntaxes), scu_role_allowed=scu_role)
        for uid in uids.storage_sop_classes()
    )


def qr_find_supported(
    transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
) -> tuple[SupportedContext, ...]:
    """Acceptor: the Query/Retrieve FIND SOP classes of :data:`QR_FIND` (for
    ``AEConfig.supported_contexts``; an AE does not accept them unless configured)."""
    return tuple(SupportedContext(uid, tuple(transfer_syntaxes)) for uid in QR_FIND)


def worklist_supported(
    transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
) -> tuple[SupportedContext, ...]:
    """Acceptor: the Modality Worklist Information Model FIND SOP class (for
    ``AEConfig.supported_contexts`` of a worklist SCP; not accepted unless configured)."""
    return (SupportedContext(uids.MODALITY_WORKLIST_FIND, tuple(transfer_syntaxes)),)


def mpps_supported(
    transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
) -> tuple[SupportedContext, ...]:
    """Acceptor: the Modality Performed Procedure Step SOP class, N-CREATE and N-SET (for
    ``AEConfig.supported_contexts`` of an MPPS SCP; not accepted unless configured)."""
    return (SupportedContext(uids.MODALITY_PERFORMED_PROCEDURE_STEP, tuple(transfer_syntaxes)),)


def qr_supported(
    transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
) -> tuple[SupportedContext, ...]:
    """Acceptor: every Query/Retrieve SOP class of :data:`QR_FIND`, :data:`QR_GET` and
    :data:`QR_MOVE` (for ``AEConfig.supported_contexts`` of a Q/R SCP).  A C-GET SCP must also
    accept the storage SOP classes with the SCU role allowed
    (``storage_supported(scu_role=True)``) to send its sub-operations."""
    return tuple(
        SupportedContext(uid, tuple(transfer_syntaxes)) for uid in QR_FIND + QR_GET + QR_MOVE
    )


def retrieve_contexts(
    operation: str,
    *,
    model: str = "study",
    storage: Iterable[str] = COMMON_STORAGE,
    transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
    storage_transfer_syntaxes: Sequence[str] | None = None,
) -> list[ContextRequest]:
    """Requestor: the contexts for a C-GET or C-MOVE (``operation`` ``"get"`` or ``"move"``) on
    ``model`` (``"patient"``, ``"study"``, ``"patient-study"``): the model's GET or MOVE SOP
    class and its FIND SOP class (to query first on the same association), and for C-GET the
    ``storage`` SOP classes proposed with the SCP role (this side receives the C-STOREs), in
    ``storage_transfer_syntaxes``; by default every transfer syntax, so that stored instances
    come as they are: per SOP class, one context for the uncompressed syntaxes and one per
    compressed syntax when they fit (19 contexts per class: up to 6 SOP classes), else one for
    the uncompressed and one for all the compressed syntaxes (up to 63), else one with all of
    them (up to 126).  ValueError
    beyond the 128 contexts an A-ASSOCIATE-RQ holds."""
    index = {"patient": 0, "study": 1, "patient-study": 2}
    if model not in index:
        raise ValueError(f"unknown Query/Retrieve model {model!r} (one of {', '.join(index)})")
    if operation not in ("get", "move"):
        raise ValueError(f"operation must be 'get' or 'move', not {operation!r}")
    retrieve = (QR_GET if operation == "get" else QR_MOVE)[index[model]]
    tss = tuple(transfer_syntaxes)
    out = [ContextRequest(retrieve, tss), ContextRequest(QR_FIND[index[model]], tss)]
    if operation == "get":
        classes = list(dict.fromkeys(storage))
        if len(classes) + len(out) > 128:
            raise ValueError(
                f"{len(classes)} storage SOP classes and {len(out)} Query/Retrieve contexts: an "
                "association proposes 128 contexts at most"
            )
        if storage_transfer_syntaxes is not None:
            groups = [tuple(storage_transfer_syntaxes)]
        else:
            # The acceptor picks one transfer syntax per context, and an instance in a
            # compressed syntax can only be sent in a context of that syntax.  So, as far as
            # the 128 contexts allow: one context for the uncompressed syntaxes (anything
            # uncompressed converts to them) and one per compressed syntax; else the
            # compressed ones together (the SCP picks one of them); else one context each.
            everything = uids.ALL_TRANSFER_SYNTAXES
            plain = tuple(t for t in everything if t in uids.UNCOMPRESSED_TRANSFER_SYNTAXES)
            packed = tuple(t for t in everything if t not in uids.UNCOMPRESSED_TRANSFER_SYNTAXES)
            if len(out) + len(classes) * (1 + len(packed)) <= 128:
                groups = [plain, *((t,) for t in packed)]
            elif len(out) + 2 * len(classes) <= 128:
                groups = [plain, packed]
            else:
                groups = [everything]
        out.extend(
            ContextRequest(uid, group, scu_role=False, scp_role=True)
            for uid in classes
            for group in groups
        )
    return out


def retrieve_contexts_for_syntaxes(
    found: Mapping[str, Iterable[str]],
    *,
    model: str = "study",
    transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
) -> list[ContextRequest]:
    """Requestor: the contexts for a C-GET of instances whose SOP classes and transfer
    syntaxes are known (``found``: SOP Class UID -> the syntaxes its instances are held in, as
    :func:`~asyncdicom.services.retrieve.syntaxes_to_retrieve` reports them from Available
    Transfer Syntax UID), each storage context with the SCP role:

    * when they fit in 128 contexts: per SOP class one context with the uncompressed syntaxes
      and one per compressed syntax reported (a class with none reported: one context with
      every compressed syntax), so that every instance can come as it is stored;
    * else per SOP class the uncompressed syntaxes only: the SCP converts what it holds
      compressed (an SCP that does not gets those sub-operations refused).

    Raises:
        ValueError: the SOP classes do not fit even one context each, or an unknown model.
    """
    base = retrieve_contexts("get", model=model, storage=(), transfer_syntaxes=transfer_syntaxes)
    everything = uids.ALL_TRANSFER_SYNTAXES
    plain = tuple(t for t in everything if t in uids.UNCOMPRESSED_TRANSFER_SYNTAXES)
    packed = tuple(t for t in everything if t not in uids.UNCOMPRESSED_TRANSFER_SYNTAXES)
    precise: list[ContextRequest] = []
    for uid, syntaxes in found.items():
        precise.append(ContextRequest(uid, plain, scu_role=False, scp_role=True))
        own = sorted({t for t in syntaxes if t not in plain})
        groups = [(t,) for t in own] if own else [packed]
        precise.extend(ContextRequest(uid, g, scu_role=False, scp_role=True) for g in groups)
    if len(base) + len(precise) <= 128:
        return base + precise
    if len(base) + len(found) > 128:
        raise ValueError(
            f"{len(found)} storage SOP classes and {len(base)} Query/Retrieve contexts: an "
            "association proposes 128 contexts at most"
        )
    return base + [ContextRequest(uid, plain, scu_role=False, scp_role=True) for uid in found]


#: Storage Commitment Push Model, requestor side: the context to propose for ``commit()``
STORAGE_COMMITMENT: tuple[ContextRequest, ...] = (
    ContextRequest(uids.STORAGE_COMMITMENT_PUSH_MODEL, DEFAULT_TRANSFER_SYNTAXES),
)


def storage_commitment_scu_supported(
    transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
) -> tuple[SupportedContext, ...]:
    """Acceptor, for a Storage Commitment **SCU** that receives its reports on associations
    the SCP opens: the SOP class with the SCU role allowed (the SCP proposes the SCP role for
    itself, PS3.7 D.3.3.4).  The SCP role stays allowed too, for peers that propose no role
    selection at all."""
    return (
        SupportedContext(
            uids.STORAGE_COMMITMENT_PUSH_MODEL,
            tuple(transfer_syntaxes),
            scu_role_allowed=True,
            scp_role_allowed=True,
        ),
    )


def storage_commitment_scp_supported(
    transfer_syntaxes: Sequence[str] = DEFAULT_TRANSFER_SYNTAXES,
) -> tuple[SupportedContext, ...]:
    """Acceptor, for a Storage Commitment **SCP** (:class:`~asyncdicom.services.CommitmentSCP`):
    the SOP class in the SCP role."""
    return (SupportedContext(uids.STORAGE_COMMITMENT_PUSH_MODEL, tuple(transfer_syntaxes)),)
