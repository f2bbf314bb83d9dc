"""The public surface, pinned: each public module's ``__all__`` against a list written here by
hand, every exception in :mod:`asyncdicom.errors` under ``DICOMError`` (as its docstring draws
the tree), the old import paths still working with a ``DeprecationWarning``, and no ``Any`` in
the signatures of the main SCU calls.

A change to the public API changes this file too: on purpose, in review.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import pkgutil
import re
import typing
import warnings
from typing import Any

import pytest

import asyncdicom
from asyncdicom import errors

EXPECTED_ALL: dict[str, set[str]] = {
    "asyncdicom": {
        "AE", "AEConfig", "Association", "ContextRequest", "DIMSEResponse", "FindResults",
        "HandlerRegistry", "HookEvent", "IdentityDecision", "Inbox", "IncomingInstance",
        "Notification", "Notifications", "Operation", "Priority",
        "QueryFailed", "Retrieval", "RetrieveFailed", "Server", "Service", "ServiceRequest",
        "Status", "StatusCategory", "SupportedContext", "Timeouts",
        "TooManyPresentationContexts", "__version__", "contexts_for_files", "presets", "uids",
    },
    "asyncdicom.errors": {
        "DICOMError",
        # sans-IO (defined in asyncdicom.protocol.errors)
        "LocalProtocolError", "ProtocolError", "TruncatedPDU", "UnrecognizedPDU",
        "UnexpectedPDU", "InvalidPDU", "InvalidItem", "InvalidParameterValue",
        "BadProtocolVersion", "PDUTooLarge", "DIMSEError",
        # transport and association
        "TransportError", "TLSError", "ConnectTimeout", "ConnectionLost", "AssociationError",
        "AssociationRejected", "AssociationAborted", "ACSETimeout", "DIMSETimeout",
        "NetworkTimeout", "NoAcceptedContext", "TooManyPresentationContexts",
        # files and data sets
        "StorageError", "InvalidDicomFile", "InvalidDataset", "EmptyDataSet",
        "DataSetMismatch", "TranscodeError", "UnsupportedTransferSyntax", "UIDPatchError",
        # operations the peer failed
        "QueryFailed", "RetrieveFailed", "RetrieveIncomplete", "CommitmentRefused",
        "CommitmentTimeout",
        # SCP side, configuration, tools
        "QueryError", "IdentifierMismatch", "UnableToProcess", "ModelNotSupported",
        "IndexDatabaseError", "SchemaVersionError", "SlowPath", "UsersFileError", "AuditLogError",
        "WorkerFailed", "WorkerDied", "RulesError", "QueueBusy", "InboxBusy",
        "BenchResultError", "IncompatibleRuns",
    },
    "asyncdicom.lowlevel": {
        "BaseAssociation", "DatasetSource", "Dispatcher", "IncomingRequest", "Owner",
        "ServiceDispatcher", "call", "is_async_callable", "request_type", "HandlerCall",
        "Responder",
    },
    "asyncdicom.services": {
        "Association", "DEFAULT_SERVICES", "HandlerRegistry", "Service", "ServiceRequest",
        "make_response", "FindResults", "Retrieval", "QueryFailed", "RetrieveFailed",
        "RetrievedInstance", "RetrievedInstances",
        "CommitmentRefused", "CommitmentResult", "CommitmentSCP", "CommitmentTimeout",
        "MPPSSCP", "MPPS_SERVICE", "MWL_FIND_SERVICE", "QR_FIND_SERVICE", "QR_GET_SERVICE",
        "QR_MOVE_SERVICE", "STORAGE_COMMITMENT_SERVICE", "STORAGE_SERVICE",
        "VERIFICATION_SERVICE", "Component", "Handler", "INSTANCE_AVAILABILITY_NOTIFICATION",
        "INSTANCE_AVAILABILITY_SERVICE", "AvailabilityReceiver", "AvailabilitySCU",
    },
    "asyncdicom.association": {
        "BaseAssociation", "DIMSEResponse", "Dispatcher", "IncomingRequest", "Operation",
        "Owner",
    },
    "asyncdicom.storage": {
        "DUPLICATE_POLICIES", "DuplicatePolicy", "LAYOUTS", "Layout", "NATIVE_TRANSFER_SYNTAXES",
        "Part10Source", "Part10Writer", "StoredFile", "decode_dataset", "encode_dataset",
        "encode_file_meta", "folder_name", "is_valid_uid", "read_header", "read_part10_for_send",
        "remove_stale_temp_files", "safe_filename", "target_path", "transcode",
        "StorageError", "InvalidDataset", "InvalidDicomFile", "TranscodeError",
        "UnsupportedTransferSyntax",
    },
    "asyncdicom.storage.names": {
        "MISSING_VALUE_FOLDER", "folder_name", "is_valid_uid", "safe_filename", "target_path",
    },
    "asyncdicom.storage.meta": {"encode_file_meta"},
    "asyncdicom.storage.writer": {
        "DUPLICATE_POLICIES", "LAYOUTS", "DuplicatePolicy", "Layout", "Part10Writer",
        "StoredFile", "prune_empty_folders", "remove_stale_temp_files",
    },
    "asyncdicom.storage.reader": {"Part10Source", "read_part10_for_send", "transcode"},
    "asyncdicom.storage.codec": {
        "HEADER_DEFER_SIZE", "NATIVE_TRANSFER_SYNTAXES", "SPOOL_DEFER_SIZE", "decode_dataset",
        "decode_spooled_dataset", "encode_dataset", "read_header",
    },
    "asyncdicom.storage.inflate": {"InflatingReader"},
    "asyncdicom.storage.tags": {
        "BULK_PIXEL_DATA", "LONG_LENGTH_VRS", "MEDIA_STORAGE_SOP_CLASS_UID",
        "MEDIA_STORAGE_SOP_INSTANCE_UID", "PATIENT_ID", "PIXEL_DATA", "SERIES_INSTANCE_UID",
        "SOP_CLASS_UID", "SOP_INSTANCE_UID", "STUDY_INSTANCE_UID", "TRANSFER_SYNTAX_UID",
    },
    # kept for one release: the names the module had before it was split
    "asyncdicom.storage.files": {
        "DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN", "DUPLICATE_POLICIES", "EXPLICIT_VR_BIG_ENDIAN",
        "EXPLICIT_VR_LITTLE_ENDIAN", "IMPLICIT_VR_LITTLE_ENDIAN", "LAYOUTS",
        "MISSING_VALUE_FOLDER", "NATIVE_TRANSFER_SYNTAXES", "SPOOL_DEFER_SIZE",
        "DuplicatePolicy", "InvalidDataset", "InvalidDicomFile", "Layout", "Part10Source",
        "Part10Writer", "StorageError", "StoredFile", "TranscodeError",
        "UnsupportedTransferSyntax", "decode_dataset", "decode_spooled_dataset",
        "encode_dataset", "encode_file_meta", "folder_name", "is_valid_uid",
        "prune_empty_folders", "read_header", "read_part10_for_send", "remove_stale_temp_files",
        "safe_filename", "target_path", "transcode",
    },
    "asyncdicom.storage.contexts": {
        "MAX_PRESENTATION_CONTEXTS", "TooManyPresentationContexts", "context_groups",
        "contexts_for_files", "contexts_for_syntaxes",
    },
    "asyncdicom.storage.transcoding": {
        "CODECS_HINT", "LOSSLESS_COMPRESSED_TRANSFER_SYNTAXES", "LOSSY_TRANSFER_SYNTAXES",
        "Transcoded", "can_decode", "can_encode", "choose_syntax", "conversion_refused",
        "convert_stored_file", "is_lossy", "syntax_by_name", "transcode_instance",
    },
    "asyncdicom.testing": {"MemoryByteStream", "associated", "memory_stream_pair"},
    "asyncdicom.config": {
        "AEConfig", "DEFAULT_TRANSFER_SYNTAXES", "MAX_MAX_PDU_LENGTH", "MIN_MAX_PDU_LENGTH",
        "Timeouts",
    },
    "asyncdicom.hooks": {"HookCallback", "HookEvent", "Hooks"},
    "asyncdicom.presets": {
        "COMMON_STORAGE", "QR_FIND", "QR_GET", "QR_MOVE", "STORAGE_COMMITMENT", "VERIFICATION",
        "contexts_for", "mpps_supported", "qr_find_supported", "qr_supported",
        "retrieve_contexts", "retrieve_contexts_for_syntaxes", "storage_commitment_scp_supported",
        "storage_commitment_scu_supported", "storage_supported", "worklist_supported",
    },
    "asyncdicom.qr": {
        "INDEX_COLUMNS", "LEVELS", "MODELS", "SCHEMA_VERSION", "WORKLIST_MODEL", "Query",
        "Index", "SQLiteIndex", "PostgreSQLIndex", "open_index", "SqlColumn", "SqlFilter",
        "index_value", "match_value", "parse_query", "parse_worklist_query", "sql_filter",
        "QueryError", "IdentifierMismatch", "UnableToProcess", "ModelNotSupported",
        "IndexDatabaseError", "SchemaVersionError",
    },
    "asyncdicom.audit": {"AuditLog", "AuditLogError", "AuditSink"},
    "asyncdicom.users": {
        "Lockout", "LockoutAttempt", "PasswordHash", "SCRYPT_N", "SCRYPT_P", "SCRYPT_R",
        "USERNAME", "USERNAME_AND_PASSCODE", "UserStore", "UsersFileError", "check_username",
        "hash_password", "identity_user_name",
    },
    "asyncdicom.worklist": {"WORKLIST_SUFFIXES", "Worklist"},
    "asyncdicom.archive": {"Archive", "DEFAULT_DB_NAME", "FolderCheck", "qrscp_config"},
    "asyncdicom.correlation": {"Correlator", "Pending", "Subscription", "registry"},
    "asyncdicom.services.selfretrieve": {
        "DEFAULT_ARRIVAL_TIMEOUT", "RetrieveIncomplete", "RetrieveToSelfSCU",
        "RetrievedInstance", "RetrievedInstances",
    },
    "asyncdicom.workers": {
        "TITLES_PER_WORKER", "WorkerDied", "WorkerGroup", "WorkerInfo", "default_workers",
        "serve_workers", "workers_server",
    },
    "asyncdicom.loadtest": {
        "LoadGenerator", "LoadResult", "LoadSpec", "Operation", "UIDPatchError", "WorkerFailed",
        "classify", "new_histogram", "percentiles", "run_in_processes", "run_load",
        "write_percentile_chart", "BenchResultError", "IncompatibleRuns", "RunInfo", "Timeline",
        "merge_runs", "read_result",
    },
    "asyncdicom.protocol": {
        "AcceptorConfig", "CommandReceived", "ContextRequest", "DatasetFragment",
        "LocalProtocolError", "MessageAssembler", "NegotiatedAssociation", "PDU", "PDUFramer",
        "PresentationContext", "ProtocolError", "RequestorConfig", "Role", "Status",
        "StatusCategory", "SupportedContext", "UpperLayer", "build_associate_rq",
        "decode_command", "decode_pdu", "encode_command", "encode_pdata", "encode_pdu",
        "negotiate", "process_associate_ac",
    },
    "asyncdicom.protocol.errors": {
        "AbortReason", "AbortSource", "BadProtocolVersion", "DICOMError", "DIMSEError",
        "InvalidItem", "InvalidPDU", "InvalidParameterValue", "LocalProtocolError",
        "PDUTooLarge", "ProtocolError", "RejectReason", "RejectResult", "RejectSource",
        "TruncatedPDU", "UnexpectedPDU", "UnrecognizedPDU",
    },
    "asyncdicom.protocol.messages": {
        "MESSAGE_TYPES", "CCancelRQ", "CEchoRQ", "CEchoRSP", "CFindRQ", "CFindRSP", "CGetRQ",
        "CGetRSP", "CMoveRQ", "CMoveRSP", "CStoreRQ", "CStoreRSP", "CommandField", "Message",
        "NActionRQ", "NActionRSP", "NCreateRQ", "NCreateRSP", "NDeleteRQ", "NDeleteRSP",
        "NEventReportRQ", "NEventReportRSP", "NGetRQ", "NGetRSP", "NSetRQ", "NSetRSP",
        "Priority", "Request", "RequestMessage", "Response", "ResponseMessage", "sop_class_uid",
    },
}  # fmt: skip


@pytest.mark.parametrize("module_name", sorted(EXPECTED_ALL))
def test_all_is_pinned(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert set(module.__all__) == EXPECTED_ALL[module_name]
    assert len(module.__all__) == len(set(module.__all__)), "a name listed twice"
    if module_name == "asyncdicom.storage.files":
        return  # every name of it warns: see test_storage_files_names_warn_and_point_on
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the current names never warn
        for name in module.__all__:
            assert getattr(module, name) is not None, name


def test_extension_internals_are_not_beside_the_user_api() -> None:
    user_facing = EXPECTED_ALL["asyncdicom"] | EXPECTED_ALL["asyncdicom.services"]
    assert not user_facing & {
        "call", "request_type", "is_async_callable", "ServiceDispatcher", "Dispatcher",
        "IncomingRequest", "BaseAssociation", "ServiceAssociation",
    }  # fmt: skip


def _package_modules() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages(asyncdicom.__path__, "asyncdicom.")
        if not info.name.endswith("__main__")
    )


def test_every_public_exception_is_in_errors_and_a_dicom_error() -> None:
    found: dict[str, type[BaseException]] = {}
    for name in _package_modules():
        if name.startswith("asyncdicom.cli"):
            continue  # the command-line programs' own (CLIError: a message and exit status 1)
        for attr, value in vars(importlib.import_module(name)).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.startswith("asyncdicom")
                and not attr.startswith("_")
            ):
                found[f"{name}.{attr}"] = value
    assert len(set(found.values())) >= 40  # the walk found them
    for where, cls in found.items():
        assert getattr(errors, cls.__name__, None) is cls, f"{where} is not in asyncdicom.errors"
        assert issubclass(cls, errors.DICOMError), where
    named = {getattr(errors, n) for n in errors.__all__}
    assert set(found.values()) <= named


def test_standard_bases_are_kept_where_they_help() -> None:
    assert issubclass(errors.UsersFileError, ValueError)
    assert issubclass(errors.QueryError, ValueError)
    assert issubclass(errors.InvalidDataset, ValueError)
    assert issubclass(errors.TooManyPresentationContexts, ValueError)
    assert issubclass(errors.AuditLogError, OSError)
    assert issubclass(errors.CommitmentTimeout, TimeoutError)
    assert issubclass(errors.ConnectTimeout, TimeoutError)
    assert issubclass(errors.WorkerFailed, RuntimeError)
    assert issubclass(errors.BenchResultError, ValueError)
    # the sans-IO errors are the same classes under both names
    from asyncdicom.protocol import errors as protocol_errors

    assert errors.ProtocolError is protocol_errors.ProtocolError
    assert errors.DICOMError is protocol_errors.DICOMError


def _tree() -> list[tuple[int, str]]:
    """(depth, class name) of each line of the tree in asyncdicom.errors' docstring."""
    doc = errors.__doc__ or ""
    lines = doc[doc.index("The tree::") :].splitlines()[2:]
    indent = len(lines[0]) - len(lines[0].lstrip())
    out = []
    for line in lines:
        match = re.match(r"^([ │├└─]*)([A-Z][A-Za-z]+)", line[indent:])
        if match is None:
            break
        out.append((len(match.group(1)) // 4, match.group(2)))
    return out


def test_the_docstring_draws_the_tree_as_it_is() -> None:
    tree = _tree()
    drawn = {name for _, name in tree}
    assert drawn == set(errors.__all__)
    parents: list[str] = []
    for depth, name in tree:
        del parents[depth:]
        cls = getattr(errors, name)
        if parents:
            assert issubclass(cls, getattr(errors, parents[-1])), (name, parents[-1])
        # the bases in parentheses are bases indeed
        parents.append(name)
    # a standard base in parentheses, "ConnectTimeout (TimeoutError)", is a base indeed
    bases = re.findall(r"([A-Z][A-Za-z]+) \(([A-Z][A-Za-z]+)\)", errors.__doc__ or "")
    assert len(bases) >= 8
    for name, base in bases:
        assert issubclass(getattr(errors, name), getattr(builtins, base)), (name, base)


@pytest.mark.parametrize(
    ("module_name", "old", "new"),
    [
        ("asyncdicom", "IncomingRequest", "asyncdicom.lowlevel.IncomingRequest"),
        ("asyncdicom.association", "Association", "asyncdicom.lowlevel.BaseAssociation"),
        ("asyncdicom.services", "ServiceAssociation", "asyncdicom.Association"),
        ("asyncdicom.services", "ServiceDispatcher", "asyncdicom.lowlevel.ServiceDispatcher"),
        ("asyncdicom.services", "call", "asyncdicom.lowlevel.call"),
        ("asyncdicom.services", "request_type", "asyncdicom.lowlevel.request_type"),
        ("asyncdicom.services", "is_async_callable", "asyncdicom.lowlevel.is_async_callable"),
    ],
)
def test_old_names_work_with_a_deprecation_warning(module_name: str, old: str, new: str) -> None:
    module = importlib.import_module(module_name)
    new_module, _, new_name = new.rpartition(".")
    expected = getattr(importlib.import_module(new_module), new_name)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        assert getattr(module, old) is expected
    with pytest.warns(DeprecationWarning):
        exec(f"from {module_name} import {old}", {})
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


def test_storage_files_names_warn_and_point_on() -> None:
    from asyncdicom.storage import files

    for name in files.__all__:
        with pytest.warns(DeprecationWarning, match=rf"import {name} from asyncdicom\.") as caught:
            value = getattr(files, name)
        new_module = str(caught[0].message).rpartition(" from ")[2]
        assert new_module != "asyncdicom.storage.files"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert getattr(importlib.import_module(new_module), name) is value, name
    # the writer is the same class however it is reached
    with pytest.warns(DeprecationWarning):
        from asyncdicom.storage.files import Part10Writer
    from asyncdicom.storage import Part10Writer as new_writer

    assert Part10Writer is new_writer


def test_one_class_is_called_association() -> None:
    classes = set()
    for name in _package_modules():
        for attr, value in vars(importlib.import_module(name)).items():
            if (
                inspect.isclass(value)
                and value.__name__ == attr == "Association"
                and value.__module__.startswith("asyncdicom")
            ):
                classes.add(value)
    assert classes == {asyncdicom.Association}


def _mentions_any(hint: Any) -> bool:
    if hint is Any:
        return True
    return any(_mentions_any(arg) for arg in typing.get_args(hint))


@pytest.mark.parametrize("method", ["store", "find", "get", "move", "commit", "echo"])
def test_no_any_in_the_scu_signatures(method: str) -> None:
    function = getattr(asyncdicom.Association, method)
    hints = typing.get_type_hints(function, vars(inspect.getmodule(function)) | _type_names())
    assert hints, method
    for name, hint in hints.items():
        assert not _mentions_any(hint), (method, name, hint)


def test_no_any_in_decode() -> None:
    hints = typing.get_type_hints(asyncdicom.DIMSEResponse.decode, _type_names())
    assert not _mentions_any(hints["return"])


def _type_names() -> dict[str, Any]:
    # the names the modules import for type checking only
    from pydicom.dataset import Dataset

    from asyncdicom.services import ServiceRequest
    from asyncdicom.storage.reader import Part10Source
    from asyncdicom.storage.writer import DuplicatePolicy, Layout

    return {
        "Dataset": Dataset,
        "Part10Source": Part10Source,
        "DuplicatePolicy": DuplicatePolicy,
        "Layout": Layout,
        "ServiceRequest": ServiceRequest,
    }


def test_message_bases_declare_the_ids() -> None:
    from asyncdicom.protocol import messages

    hints = typing.get_type_hints(messages.Request)
    assert hints["message_id"] is int
    hints = typing.get_type_hints(messages.Response)
    assert hints["message_id_being_responded_to"] is int
