"""pynetdicom as a modality: a Modality Worklist C-FIND, then MPPS N-CREATE and N-SETs, for
interop tests.

Usage::

    python tests/harness/pynetdicom_mwl_mpps_scu.py HOST PORT --modality CT --mpps-uid UID

On one association (Modality Worklist FIND and MPPS proposed): a C-FIND for the worklist items
whose Scheduled Procedure Step has ``--modality`` (returning Accession Number, Patient's Name
and the step's Scheduled Station AE Title and Modality); an N-CREATE of ``--mpps-uid`` (status
IN PROGRESS); an N-SET to COMPLETED; an N-SET again, which the SCP must refuse; an N-SET of an
unknown instance.  One JSON object is printed on stdout: ``find_statuses`` (every C-FIND
response status), ``matches`` (``{accession, patient, station, modality}`` per Pending
response), and ``create``, ``complete``, ``again``, ``unknown``, each ``{status, error_id,
error_comment, instance}`` from the N-*-RSP.  Exit code 0 when every request got a response,
2 otherwise (then ``error`` says why).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE

MWL = "1.2.840.10008.5.1.4.31"
MPPS = "1.2.840.10008.3.1.2.3.3"
TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]


def _query(modality: str) -> Dataset:
    step = Dataset()
    step.Modality = modality
    step.ScheduledStationAETitle = ""
    ds = Dataset()
    ds.AccessionNumber = ""
    ds.PatientName = ""
    ds.ScheduledProcedureStepSequence = Sequence([step])
    return ds


def _rsp(status: Any, instance: str | None = None) -> dict[str, Any]:
    if not status:
        raise ConnectionError("no valid response (timeout or association ended)")
    return {
        "status": int(status.Status),
        "error_id": int(status.ErrorID) if "ErrorID" in status else None,
        "error_comment": str(status.ErrorComment) if "ErrorComment" in status else None,
        "instance": instance,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    ae = AE(ae_title=args.aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = args.timeout
    ae.add_requested_context(MWL, TRANSFER_SYNTAXES)
    ae.add_requested_context(MPPS, TRANSFER_SYNTAXES)
    assoc = ae.associate(args.host, args.port, ae_title=args.called_aet)
    if not assoc.is_established:
        raise ConnectionError(f"no association with {args.host}:{args.port}")
    result: dict[str, Any] = {"find_statuses": [], "matches": []}
    try:
        for status, identifier in assoc.send_c_find(_query(args.modality), MWL):
            if not status:
                raise ConnectionError("no valid C-FIND response")
            result["find_statuses"].append(int(status.Status))
            if identifier is not None:
                step = identifier.ScheduledProcedureStepSequence[0]
                result["matches"].append(
                    {
                        "accession": str(identifier.AccessionNumber),
                        "patient": str(identifier.PatientName),
                        "station": str(step.ScheduledStationAETitle),
                        "modality": str(step.Modality),
                    }
                )
        created = Dataset()
        created.PerformedProcedureStepStatus = "IN PROGRESS"
        created.PerformedProcedureStepID = "PPS-1"
        created.PerformedStationAETitle = args.aet
        created.Modality = args.modality
        status, _ = assoc.send_n_create(created, MPPS, args.mpps_uid)
        result["create"] = _rsp(status, status.get("AffectedSOPInstanceUID") if status else None)
        done = Dataset()
        done.PerformedProcedureStepStatus = "COMPLETED"
        done.PerformedProcedureStepEndDate = "20240301"
        status, _ = assoc.send_n_set(done, MPPS, args.mpps_uid)
        result["complete"] = _rsp(status)
        again = Dataset()
        again.PerformedProcedureStepStatus = "DISCONTINUED"
        status, _ = assoc.send_n_set(again, MPPS, args.mpps_uid)
        result["again"] = _rsp(status)
        status, _ = assoc.send_n_set(done, MPPS, args.mpps_uid + ".9")
        result["unknown"] = _rsp(status)
    finally:
        if assoc.is_established:
            assoc.release()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/harness/pynetdicom_mwl_mpps_scu.py")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--modality", default="CT")
    parser.add_argument("--mpps-uid", required=True)
    parser.add_argument("--aet", default="PYNETDICOM-MOD")
    parser.add_argument("--called-aet", default="ANY-SCP")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except (ConnectionError, ValueError, OSError, RuntimeError, AttributeError) as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    from pynetdicom_race import close_reactor_race  # run as a script: tests/harness first

    close_reactor_race()
    sys.exit(main())
