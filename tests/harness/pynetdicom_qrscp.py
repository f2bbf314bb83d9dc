"""Run pynetdicom's own ``qrscp`` application, with one threading race of pynetdicom 2.x closed.

Usage: ``python tests/harness/pynetdicom_qrscp.py [qrscp options]`` (those of ``python -m
pynetdicom qrscp``).

The race: an association's reactor thread and a ``send_c_store()`` of the C-MOVE handler's
thread hand the association over with a flag the reactor sets *before* it blocks, so both may
run for a moment; when the C-STORE-RSP comes back fast (on loopback, from a peer that answers
at once), the reactor can take it off the queue first, log "Received unexpected C-STORE
service message" and drop it, and the move then waits for the lost response until its DIMSE
timeout.  Here a response the reactor takes is put back on the queue, where the waiting
``send_c_store()`` finds it; nothing else of pynetdicom's behaviour changes.
"""

from __future__ import annotations

import sys
from typing import Any

from pynetdicom.apps.qrscp import qrscp
from pynetdicom.association import Association


def _patch() -> None:
    serve_request = Association._serve_request

    def _serve(self: Any, msg: Any, context_id: int) -> None:
        if not msg.is_valid_request and not self._sent_release:
            self.dimse.msg_queue.put((context_id, msg))  # a send_*() waits for it
            return
        serve_request(self, msg, context_id)

    Association._serve_request = _serve  # type: ignore[method-assign]


if __name__ == "__main__":
    _patch()
    sys.exit(qrscp.main(sys.argv[1:]))
