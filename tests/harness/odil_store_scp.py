"""An odil Storage and Verification SCP for interop tests (Debian's ``python3-odil``).

Usage (with the interpreter python3-odil was built for, Debian's ``/usr/bin/python3``, not the
test virtual environment)::

    /usr/bin/python3 tests/harness/odil_store_scp.py --port P --output-dir D

odil's ``Association.receive_association`` binds the port itself and cannot report the port
the OS chose, so the caller picks a free one and waits until it listens
(:class:`harness.peers.OdilStoreSCP`); if the port is taken it exits with status 98. It
listens on every interface (odil has no option to choose one). One association at a time, in
a loop, until SIGTERM (which ends it at once). odil's default acceptor accepts every proposed
presentation context with its first transfer syntax, and odil sends each response on a
context it looks up by the request's abstract syntax (with two such contexts, the later one),
not on the request's: what the interop tests are about.

Printed on stdout, one line each, flushed:

* ``ASSOCIATION <id>:<abstract syntax>:<transfer syntax> ...`` for each accepted association;
* ``STORED <SOP Instance UID>`` for each C-STORE (answered with 0x0000): the data set is
  written to ``<output dir>/<SOP Instance UID>.dcm`` (a name that already exists gets
  ``.<n>``, so a duplicate shows as a second file, never as a silent overwrite);
* ``ECHO`` for each C-ECHO; ``RELEASED``, ``ABORTED <text>`` or ``ERROR <text>`` at the end of
  an association (a readiness probe that sends no A-ASSOCIATE-RQ gives ``ERROR``).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from pathlib import Path

import odil  # type: ignore[import-not-found]

# A UID is digits and dots (PS3.5 9.1); anything else would be unsafe in a file name.
_UID_RE = re.compile(r"^[0-9.]{1,64}$")


def _target(folder: Path, uid: str) -> Path:
    name = uid if _UID_RE.match(uid) else "invalid-uid"
    path = folder / f"{name}.dcm"
    n = 1
    while path.exists():
        path = folder / f"{name}.dcm.{n}"
        n += 1
    return path


def _serve_one(port: int, output: Path) -> None:
    association = odil.Association()
    association.receive_association("v4", port)
    contexts = association.get_negotiated_parameters().get_presentation_contexts()
    listed = " ".join(
        f"{pc.id}:{pc.abstract_syntax}:{b''.join(pc.transfer_syntaxes[:1]).decode()}"
        for pc in contexts
    )
    print(f"ASSOCIATION {listed}", flush=True)

    def store(request: object) -> int:
        data_set = request.get_data_set()  # type: ignore[attr-defined]
        uid = str(request.get_affected_sop_instance_uid()).strip()  # type: ignore[attr-defined]
        path = _target(output, uid)
        partial = path.with_name(path.name + ".part")
        with odil.open(os.fspath(partial), "wb") as stream:
            odil.Writer.write_file(data_set, stream)
        partial.rename(path)
        print(f"STORED {uid}", flush=True)
        return 0x0000

    def echo(request: object) -> int:
        print("ECHO", flush=True)
        return 0x0000

    dispatcher = odil.SCPDispatcher(association)
    store_scp = odil.StoreSCP(association)
    store_scp.set_callback(store)
    dispatcher.set_store_scp(store_scp)
    echo_scp = odil.EchoSCP(association)
    echo_scp.set_callback(echo)
    dispatcher.set_echo_scp(echo_scp)
    try:
        while True:
            dispatcher.dispatch()
    except odil.AssociationReleased:
        print("RELEASED", flush=True)
    except odil.AssociationAborted as exc:
        print(f"ABORTED {exc}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    # SIGTERM ends the process at once: odil waits for an association inside C++, where a
    # Python-level handler would not run until a peer connected (the harness then waited its
    # whole grace period and killed it). Files are written under a temporary name and renamed.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        try:
            _serve_one(args.port, args.output_dir)
        except SystemExit:
            raise
        except Exception as exc:  # a probe connection, a broken peer: serve the next one
            print(f"ERROR {type(exc).__name__}: {exc}", flush=True)
            if str(exc).startswith("bind:"):  # the port is taken: the caller tries another
                return 98


if __name__ == "__main__":
    sys.exit(main())
