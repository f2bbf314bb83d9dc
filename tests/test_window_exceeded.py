"""A peer that exceeds the negotiated asynchronous operations window (PS3.7 D.3.3.3) over a real
association: with the default window (1, 1: no Asynchronous Operations Window item) and with a
negotiated one (2 performed), one request more than the window while the others are still
outstanding is a protocol error of the peer: A-ABORT (source 2, service provider) and the
connection closed, the requests in the window answered before that, and another association
on the same server unharmed.  Both backends; the peer is byte-level (our own requestor
would refuse to exceed the window)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from test_hostile import PROVIDER_REASONS, RawPeer

from asyncdicom import AE, uids
from asyncdicom.protocol import messages
from asyncdicom.protocol.codec import encode_pdu
from asyncdicom.protocol.negotiation import ContextRequest, RequestorConfig, build_associate_rq
from asyncdicom.protocol.pdu import Abort, AssociateAC

pytestmark = pytest.mark.anyio

GUARD = 20
IMPLICIT = uids.IMPLICIT_VR_LITTLE_ENDIAN


def associate_rq(window: tuple[int, int] | None) -> bytes:
    rq = build_associate_rq(
        RequestorConfig(
            calling_ae_title="RAW",
            called_ae_title="SCP",
            implementation_class_uid="1.2.3.4",
            async_ops_window=window,
        ),
        [ContextRequest(uids.VERIFICATION, (IMPLICIT,))],
    )
    return encode_pdu(rq)


def granted_window(ac: AssociateAC) -> tuple[int, int] | None:
    for item in ac.user_information.sub_items if ac.user_information else ():
        invoked = getattr(item, "max_operations_invoked", None)
        if invoked is not None:
            return invoked, item.max_operations_performed
    return None


class SlowEcho:
    """An SCP whose C-ECHOs from the raw peer wait until released (so they stay
    outstanding); other callers are answered at once."""

    def __init__(self) -> None:
        self.ae = AE("SCP", async_ops_window=(2, 2))
        self.release = anyio.Event()
        self.started: list[int] = []
        self.all_started = anyio.Event()
        self.expected = 0

        @self.ae.on_echo
        async def echo(request: Any) -> int:
            if request.association.calling_ae_title == "RAW":
                self.started.append(request.message.message_id)
                if len(self.started) == self.expected:
                    self.all_started.set()
                await self.release.wait()
            return 0


@pytest.mark.parametrize(
    ("proposed", "window"),
    [(None, 1), ((2, 2), 2)],
    ids=["default-window-1", "negotiated-window-2"],
)
async def test_a_request_beyond_the_window_aborts_the_association(
    proposed: tuple[int, int] | None, window: int
) -> None:
    scp = SlowEcho()
    scp.expected = window
    with anyio.fail_after(GUARD):
        async with scp.ae.server(port=0) as server:
            async with AE("GOOD").associate("127.0.0.1", server.port, called_aet="SCP") as good:
                async with RawPeer.connect(server.port) as peer:
                    ac = await peer.associate(associate_rq(proposed))
                    granted = granted_window(ac)
                    assert (granted[1] if granted else 1) == window
                    for mid in range(1, window + 1):
                        await peer.send_message(1, messages.CEchoRQ(message_id=mid))
                    await scp.all_started.wait()  # the window is full: all outstanding
                    await peer.send_message(1, messages.CEchoRQ(message_id=window + 1))
                    abort = await peer.receive_pdu()
                    # (the server then waits for us to close, PS3.8 Sta13, as we do here)
                    assert isinstance(abort, Abort), abort
                    assert abort.source == 2 and abort.reason in PROVIDER_REASONS, abort
                # the operation beyond the window never reached the handler
                assert sorted(scp.started) == list(range(1, window + 1))
                scp.release.set()
                # the other association on the server goes on
                assert (await good.echo()).status == 0x0000
