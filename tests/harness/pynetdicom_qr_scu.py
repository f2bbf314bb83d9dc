"""pynetdicom as a Query/Retrieve SCU (C-FIND, C-GET, C-MOVE), for interop tests.

Usage::

    python tests/harness/pynetdicom_qr_scu.py find HOST PORT -k KEYWORD=VALUE... [--model M]
    python tests/harness/pynetdicom_qr_scu.py get HOST PORT -k ... --output-dir DIR
        [--storage-class UID]...
    python tests/harness/pynetdicom_qr_scu.py move HOST PORT -k ... --destination AET

Common options: ``--aet``, ``--called-aet``, ``--timeout``, ``--model`` (``study`` (default),
``patient`` or ``patient-study``), ``-k KEYWORD=VALUE`` (repeatable; ``-k KEYWORD`` or an empty
value is a return key, ``QueryRetrieveLevel`` is required).

* ``find``: one C-FIND; each Pending response's identifier is reported.
* ``get``: one C-GET proposing the GET model and the ``--storage-class`` SOP classes (CT Image
  Storage by default) with the SCP role; each C-STORE-RQ that arrives is written to
  ``DIR/<SOP Instance UID>.dcm`` and answered 0x0000.
* ``move``: one C-MOVE to ``--destination``.

One JSON object is printed on stdout: ``responses`` (every response, in order: ``status`` and,
when present, the four sub-operation counts ``remaining``/``completed``/``failed``/``warning``,
the identifier's elements as ``{keyword: str(value)}`` in ``identifier``), ``final_status``
(the last response's status, or null) and, for ``get``, ``received`` (the SOP Instance UIDs
stored, in arrival order).  Exit code: 0 when the association was established and a final
response arrived, 2 otherwise (then ``error`` says why).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

#: (model, operation) -> SOP Class UID (PS3.4 C.6)
MODELS: dict[tuple[str, str], str] = {
    ("patient", "find"): "1.2.840.10008.5.1.4.1.2.1.1",
    ("patient", "move"): "1.2.840.10008.5.1.4.1.2.1.2",
    ("patient", "get"): "1.2.840.10008.5.1.4.1.2.1.3",
    ("study", "find"): "1.2.840.10008.5.1.4.1.2.2.1",
    ("study", "move"): "1.2.840.10008.5.1.4.1.2.2.2",
    ("study", "get"): "1.2.840.10008.5.1.4.1.2.2.3",
    ("patient-study", "find"): "1.2.840.10008.5.1.4.1.2.3.1",
    ("patient-study", "move"): "1.2.840.10008.5.1.4.1.2.3.2",
    ("patient-study", "get"): "1.2.840.10008.5.1.4.1.2.3.3",
}

_COUNTS = {
    "remaining": "NumberOfRemainingSuboperations",
    "completed": "NumberOfCompletedSuboperations",
    "failed": "NumberOfFailedSuboperations",
    "warning": "NumberOfWarningSuboperations",
}


def _identifier(args: argparse.Namespace) -> Dataset:
    ds = Dataset()
    for key in args.key:
        keyword, _, value = key.partition("=")  # no "=": an empty return key
        if not keyword:
            raise ValueError(f"bad key {key!r}: expected KEYWORD=VALUE")
        setattr(ds, keyword, value)
    if "QueryRetrieveLevel" not in ds:
        raise ValueError("-k QueryRetrieveLevel=... is required")
    return ds


def _report(status: Any, identifier: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"status": int(status.Status) if "Status" in status else None}
    for name, keyword in _COUNTS.items():
        value = status.get(keyword)
        if value is not None:
            entry[name] = int(value)
    if identifier is not None:
        entry["identifier"] = {
            elem.keyword or str(elem.tag): str(elem.value) for elem in identifier
        }
    return entry


def run(args: argparse.Namespace) -> dict[str, Any]:
    query = _identifier(args)
    model = MODELS[(args.model, args.operation)]
    ae = AE(ae_title=args.aet)
    ae.acse_timeout = args.timeout
    ae.dimse_timeout = args.timeout
    ae.network_timeout = args.timeout
    ae.add_requested_context(model, [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN])
    roles: list[Any] = []
    received: list[str] = []
    handlers: list[Any] = []
    if args.operation == "get":
        output = Path(args.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        for sop_class in args.storage_class or [CT_IMAGE_STORAGE]:
            ae.add_requested_context(
                sop_class, [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]
            )
            roles.append(build_role(sop_class, scp_role=True))

        def on_store(event: Any) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            uid = str(ds.SOPInstanceUID)
            ds.save_as(output / f"{uid}.dcm", enforce_file_format=True)
            received.append(uid)
            return 0x0000

        handlers.append((evt.EVT_C_STORE, on_store))
    assoc = ae.associate(
        args.host, args.port, ae_title=args.called_aet, ext_neg=roles, evt_handlers=handlers
    )
    if not assoc.is_established:
        raise ConnectionError(f"no association with {args.host}:{args.port}")
    responses: list[dict[str, Any]] = []
    try:
        if args.operation == "find":
            results = assoc.send_c_find(query, model)
        elif args.operation == "get":
            results = assoc.send_c_get(query, model)
        else:
            results = assoc.send_c_move(query, args.destination, model)
        for status, identifier in results:
            if not status:  # an empty status: timeout, abort or invalid response
                raise ConnectionError("no valid response (timeout or association ended)")
            responses.append(_report(status, identifier))
    finally:
        if assoc.is_established:
            assoc.release()
    result: dict[str, Any] = {
        "operation": args.operation,
        "responses": responses,
        "final_status": responses[-1]["status"] if responses else None,
    }
    if args.operation == "get":
        result["received"] = received
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python tests/harness/pynetdicom_qr_scu.py",
        description="pynetdicom Query/Retrieve SCU; prints one JSON object.",
    )
    parser.add_argument("operation", choices=["find", "get", "move"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("-k", "--key", action="append", default=[], help="KEYWORD=VALUE")
    parser.add_argument("--model", choices=["study", "patient", "patient-study"], default="study")
    parser.add_argument("--aet", default="PYNETDICOM-QR", help="our (calling) AE title")
    parser.add_argument("--called-aet", default="ANY-SCP", help="the peer's AE title")
    parser.add_argument("--timeout", type=float, default=60.0, help="ACSE/DIMSE/network timeout")
    parser.add_argument("--output-dir", default=".", help="get: where received files go")
    parser.add_argument("--storage-class", action="append", help="get: a storage SOP class")
    parser.add_argument("--destination", default="", help="move: the Move Destination AE")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = run(args)
    except (ConnectionError, ValueError, OSError, RuntimeError) as exc:
        print(json.dumps({"operation": args.operation, "error": str(exc)}), flush=True)
        return 2
    print(json.dumps(result), flush=True)
    return 0 if result["final_status"] is not None else 2


if __name__ == "__main__":
    from pynetdicom_race import close_reactor_race  # run as a script: tests/harness first

    close_reactor_race()
    sys.exit(main())
