"""Bare Twisted KRPC responder: the reference for the DHT query benchmark.

    python benchmarks/bare_krpc_responder.py HOST PORT

A plain ``DatagramProtocol`` on the epoll reactor. Each datagram is decoded
with ``fastbencode.bdecode``; a ``ping`` query is answered with ``{id}``, a
``get_peers`` query with ``{id, token, nodes}`` (8 fixed fake compact nodes),
both encoded with ``fastbencode.bencode``, with the query's transaction id.
Anything else is dropped silently. No routing table, no storage, no rate
limit, no argument checks, no amplification rule, no logging per packet, no
metrics: this is the floor of answering KRPC from Twisted in Python, against
which the DHT node is compared. Like the node's DHT socket, its receive and
send buffers are 1 MiB.
"""

import os
import socket
import sys

import fastbencode
from twisted.internet.protocol import DatagramProtocol

SOCKET_BUFFER = 1024 * 1024
NODE_ID = os.urandom(20)
TOKEN = os.urandom(8)
# 8 compact nodes: 20-byte id, 127.1.0.x, port 6881 (never contacted).
NODES = b"".join(os.urandom(20) + bytes([127, 1, 0, i]) + (6881).to_bytes(2, "big") for i in range(1, 9))
PING_BODY = {b"id": NODE_ID}
GET_PEERS_BODY = {b"id": NODE_ID, b"nodes": NODES, b"token": TOKEN}
BODIES = {b"ping": PING_BODY, b"get_peers": GET_PEERS_BODY}


class BareKrpcResponder(DatagramProtocol):
    noisy = False

    def datagramReceived(self, data, addr):
        try:
            message = fastbencode.bdecode(data)
            body = BODIES.get(message[b"q"])
            tid = message[b"t"]
        except Exception:  # noqa: BLE001 - anything malformed is dropped
            return
        if body is not None:
            self.transport.write(fastbencode.bencode({b"r": body, b"t": tid, b"y": b"r"}), addr)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: bare_krpc_responder.py HOST PORT", file=sys.stderr)
        return 2
    host, port = argv[0], int(argv[1])

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    listening = reactor.listenUDP(port, BareKrpcResponder(), interface=host)
    sock = listening.socket
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
