"""Run pynetdicom's own ``qrscp`` application with TCP_NODELAY on every connection.

Usage: ``python tests/benchmarks/qr_pynetdicom.py [qrscp options]`` (the options of
``python -m pynetdicom qrscp``, e.g. ``-c config.ini``).

pynetdicom leaves Nagle's algorithm on, and every request/response round trip on loopback then
waits for a delayed ACK; the other peers of the benchmark (DCMTK with ``TCP_NODELAY=1``,
asyncdicom always) have it off.  This launcher sets TCP_NODELAY on the sockets pynetdicom
accepts and on those it opens (the C-MOVE sub-associations), then runs the unmodified
application: nothing else of pynetdicom's behaviour changes.

The application needs SQLAlchemy, which is not a dependency of pynetdicom (nor of asyncdicom):
``bench_qr.py`` installs it into its cache folder and puts that folder on PYTHONPATH for this
process only.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from pynetdicom import transport
from pynetdicom.apps.qrscp import qrscp


def _nodelay(sock: socket.socket) -> socket.socket:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _patch() -> None:
    create_socket = transport.AssociationSocket._create_socket
    get_request = transport.AssociationServer.get_request

    def _create(self: Any, address: Any) -> socket.socket:
        return _nodelay(create_socket(self, address))

    def _accept(self: Any) -> tuple[socket.socket, Any]:
        client, address = get_request(self)
        return _nodelay(client), address

    transport.AssociationSocket._create_socket = _create  # type: ignore[method-assign]
    transport.AssociationServer.get_request = _accept  # type: ignore[method-assign]


if __name__ == "__main__":
    _patch()
    sys.exit(qrscp.main(sys.argv[1:]))
