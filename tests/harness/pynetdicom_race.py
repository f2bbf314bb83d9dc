"""Close one threading race of pynetdicom 2.x in the processes that run it as a peer.

An association's reactor thread and a ``send_*()`` call of another thread (the requestor's
own, or a C-MOVE handler's) hand the association over with a flag the reactor sets *before* it
blocks, so both may read for a moment; when the response comes back fast (on loopback, from a
peer that answers at once, as ours does), the reactor can take it off the queue first, log
"Received unexpected C-... service message" and drop it, and the ``send_*()`` then waits for
the lost response until its DIMSE timeout (and aborts).  :func:`close_reactor_race` makes the
reactor put such a response back on the queue, where the waiting ``send_*()`` finds it;
nothing else of pynetdicom's behaviour changes.
"""

from __future__ import annotations

from typing import Any

from pynetdicom.association import Association


def close_reactor_race() -> None:
    """Patch :class:`pynetdicom.association.Association` (once per process)."""
    if getattr(Association, "_race_closed", False):
        return
    serve_request = Association._serve_request

    def _serve(self: Any, msg: Any, context_id: int) -> None:
        if not msg.is_valid_request and not self._sent_release:
            self.dimse.msg_queue.put((context_id, msg))  # a send_*() waits for it
            return
        serve_request(self, msg, context_id)

    Association._serve_request = _serve  # type: ignore[method-assign]
    Association._race_closed = True  # type: ignore[attr-defined]
