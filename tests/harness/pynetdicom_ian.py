"""pynetdicom on both sides of Instance Availability Notification (PS3.4 Annex R), for
interop tests.

Usage::

    python tests/harness/pynetdicom_ian.py scu HOST PORT --study UID
        --instance SERIES=CLASS=INSTANCE... [--aet A] [--called-aet C] [--uid UID]
    python tests/harness/pynetdicom_ian.py scp [--port 0] [--aet A]

``scu``: one association, one N-CREATE-RQ of a notification for study ``--study`` listing the
instances given (each ONLINE, Retrieve AE Title ``ARCHIVE``), release; prints one JSON object:
``status`` (the N-CREATE-RSP status, or null), ``uid`` (the SOP Instance UID sent).  Exit 0
when a response came.

``scp``: accepts the SOP class, answers every N-CREATE with 0x0000 (0x0120 when it has no
Study Instance UID), prints ``READY <port>`` once it listens, and when stdin reaches end of
file prints one JSON line ``RECEIVED [...]``: for each notification its ``uid``, ``study``
and ``instances`` ([series, class, instance, availability]).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt

IAN = "1.2.840.10008.5.1.4.33"
SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


def notification(study: str, instances: list[str]) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = study
    ds.ReferencedPerformedProcedureStepSequence = []
    series: dict[str, list[Dataset]] = {}
    for text in instances:
        series_uid, sop_class, sop_instance = text.split("=")
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        item.InstanceAvailability = "ONLINE"
        item.RetrieveAETitle = "ARCHIVE"
        series.setdefault(series_uid, []).append(item)
    items = []
    for series_uid, refs in series.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedSOPSequence = refs
        items.append(item)
    ds.ReferencedSeriesSequence = items
    return ds


def describe(uid: str, ds: Dataset) -> dict[str, Any]:
    return {
        "uid": uid,
        "study": str(ds.get("StudyInstanceUID", "")),
        "instances": [
            [
                str(series.SeriesInstanceUID),
                str(ref.ReferencedSOPClassUID),
                str(ref.ReferencedSOPInstanceUID),
                str(ref.get("InstanceAvailability", "")),
            ]
            for series in ds.get("ReferencedSeriesSequence", [])
            for ref in series.get("ReferencedSOPSequence", [])
        ],
    }


def scu(args: argparse.Namespace) -> int:
    ae = AE(ae_title=args.aet)
    ae.add_requested_context(IAN, SYNTAXES)
    uid = args.uid or generate_uid()
    assoc = ae.associate(args.host, args.port, ae_title=args.called_aet)
    if not assoc.is_established:
        print(json.dumps({"status": None, "uid": uid, "error": "not associated"}))
        return 2
    status, _ = assoc.send_n_create(notification(args.study, args.instance), IAN, uid)
    assoc.release()
    code = int(status.Status) if status is not None and "Status" in status else None
    print(json.dumps({"status": code, "uid": uid}))
    return 0 if code is not None else 2


def scp(args: argparse.Namespace) -> int:
    received: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_create(event: Any) -> tuple[int, Dataset | None]:
        ds = event.attribute_list
        if "StudyInstanceUID" not in ds:
            return 0x0120, None
        with lock:
            received.append(describe(str(event.request.AffectedSOPInstanceUID), ds))
        return 0x0000, None

    ae = AE(ae_title=args.aet)
    ae.add_supported_context(IAN, SYNTAXES)
    server = ae.start_server(
        ("127.0.0.1", args.port), block=False, evt_handlers=[(evt.EVT_N_CREATE, on_create)]
    )
    try:
        print(f"READY {int(server.server_address[1])}", flush=True)
        while sys.stdin.buffer.read(65536):
            pass
    finally:
        server.shutdown()
    with lock:
        print("RECEIVED " + json.dumps(received), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="mode", required=True)
    p_scu = sub.add_parser("scu")
    p_scu.add_argument("host")
    p_scu.add_argument("port", type=int)
    p_scu.add_argument("--study", required=True)
    p_scu.add_argument("--instance", action="append", default=[])
    p_scu.add_argument("--aet", default="PYNETDICOM")
    p_scu.add_argument("--called-aet", default="ANY-SCP")
    p_scu.add_argument("--uid")
    p_scp = sub.add_parser("scp")
    p_scp.add_argument("--port", type=int, default=0)
    p_scp.add_argument("--aet", default="PYNETDICOM")
    args = parser.parse_args(argv)
    return scu(args) if args.mode == "scu" else scp(args)


if __name__ == "__main__":
    from pynetdicom_race import close_reactor_race  # run as a script: tests/harness first

    close_reactor_race()
    sys.exit(main())
