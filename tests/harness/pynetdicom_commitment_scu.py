"""pynetdicom as a Storage Commitment SCU (Push Model), for interop tests.

Usage::

    python tests/harness/pynetdicom_commitment_scu.py HOST PORT -i CLASS=INSTANCE...
        [--aet A] [--called-aet C] [--timeout S]

One association: an N-ACTION-RQ (Action Type 1, a new Transaction UID, the instances given
with ``-i`` in the Referenced SOP Sequence), then the wait, at most ``--timeout`` seconds, for
the N-EVENT-REPORT-RQ on the same association (answered 0x0000 by the handler bound to
``evt.EVT_N_EVENT_REPORT``), then release.

One JSON object is printed on stdout: ``action_status`` (the N-ACTION-RSP status),
``transaction_uid`` (sent), and from the report ``event_type``, ``report_transaction_uid``,
``committed`` ([class, instance] pairs) and ``failed`` ([class, instance, reason]).  Exit code
0 when a report came, 2 otherwise (then ``error`` says why).
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

STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"


def _request(transaction: str, instances: list[str]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction
    items = []
    for pair in instances:
        sop_class, sep, sop_instance = pair.partition("=")
        if not sep or not sop_class or not sop_instance:
            raise ValueError(f"bad instance {pair!r}: expected CLASS=INSTANCE")
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def run(args: argparse.Namespace) -> dict[str, Any]:
    transaction = generate_uid()
    request = _request(transaction, args.instance)
    reports: list[dict[str, Any]] = []
    arrived = threading.Event()

    def on_report(event: Any) -> tuple[int, None]:
        ds = event.event_information
        reports.append(
            {
                "event_type": int(event.request.EventTypeID),
                "report_transaction_uid": str(ds.get("TransactionUID", "")),
                "committed": [
                    [str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)]
                    for i in ds.get("ReferencedSOPSequence", [])
                ],
                "failed": [
                    [
                        str(i.ReferencedSOPClassUID),
                        str(i.ReferencedSOPInstanceUID),
                        int(i.FailureReason),
                    ]
                    for i in ds.get("FailedSOPSequence", [])
                ],
            }
        )
        arrived.set()
        return 0x0000, None

    ae = AE(ae_title=args.aet)
    ae.acse_timeout = args.timeout
    ae.dimse_timeout = args.timeout
    ae.network_timeout = args.timeout
    ae.add_requested_context(
        STORAGE_COMMITMENT, [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN]
    )
    assoc = ae.associate(
        args.host,
        args.port,
        ae_title=args.called_aet,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
    )
    if not assoc.is_established:
        raise ConnectionError(f"no association with {args.host}:{args.port}")
    try:
        status, _reply = assoc.send_n_action(
            request, 1, STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE
        )
        if not status:
            raise ConnectionError("no N-ACTION response (timeout or association ended)")
        result: dict[str, Any] = {
            "action_status": int(status.Status),
            "transaction_uid": transaction,
        }
        if int(status.Status) == 0 and not arrived.wait(args.timeout):
            raise TimeoutError(f"no N-EVENT-REPORT within {args.timeout} s")
    finally:
        if assoc.is_established:
            assoc.release()
    if reports:
        result.update(reports[0])
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python tests/harness/pynetdicom_commitment_scu.py",
        description="pynetdicom Storage Commitment SCU; prints one JSON object.",
    )
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument(
        "-i", "--instance", action="append", default=[], help="SOP Class UID=SOP Instance UID"
    )
    parser.add_argument("--aet", default="PYNETDICOM-SC", help="our (calling) AE title")
    parser.add_argument("--called-aet", default="ANY-SCP", help="the peer's AE title")
    parser.add_argument("--timeout", type=float, default=30.0, help="ACSE/DIMSE/report timeout")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = run(args)
    except (ConnectionError, TimeoutError, ValueError, OSError, RuntimeError) as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 2
    print(json.dumps(result), flush=True)
    return 0 if "event_type" in result else 2


if __name__ == "__main__":
    from pynetdicom_race import close_reactor_race  # run as a script: tests/harness first

    close_reactor_race()
    sys.exit(main())
