"""Bare Twisted STUN Binding responder: the reference for the STUN benchmark.

    python benchmarks/bare_stun_responder.py HOST PORT

A plain ``DatagramProtocol`` on the epoll reactor.  For each datagram that
looks like an RFC 8489 Binding request (header checks only: top two bits zero,
type 0x0001, magic cookie, length a multiple of 4 that fits the datagram) it
sends a Binding success response carrying exactly one attribute,
XOR-MAPPED-ADDRESS (IPv4 or IPv6).  Anything else is dropped silently.  No
logging per packet, no metrics: this is the cost floor of answering STUN from
Twisted in Python, against which the relay node is compared.
"""

import ipaddress
import socket
import struct
import sys

from twisted.internet.protocol import DatagramProtocol

MAGIC_COOKIE = 0x2112A442
COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
ATTR_XOR_MAPPED_ADDRESS = 0x0020

_HEADER = struct.Struct("!HHI")  # type, length, cookie (transaction id follows)
# Whole response for IPv4: header + attr header + reserved/family/port + addr.
_RESP_V4 = struct.Struct("!HHI12sHHBBHI")
_RESP_V6_HEAD = struct.Struct("!HHI12sHHBBH")


def binding_response(data, host, port):
    """Return the response bytes for a Binding request, or None to drop it."""
    if len(data) < 20:
        return None
    msg_type, length, cookie = _HEADER.unpack_from(data)
    if (
        msg_type != BINDING_REQUEST  # also rejects non-zero top two bits
        or cookie != MAGIC_COOKIE
        or length & 3
        or 20 + length > len(data)
    ):
        return None
    txid = data[8:20]
    xport = port ^ (MAGIC_COOKIE >> 16)
    if ":" not in host:
        addr = struct.unpack("!I", socket.inet_aton(host))[0]
        return _RESP_V4.pack(
            BINDING_SUCCESS, 12, MAGIC_COOKIE, txid,
            ATTR_XOR_MAPPED_ADDRESS, 8, 0, 0x01, xport, addr ^ MAGIC_COOKIE,
        )
    ip = ipaddress.IPv6Address(host.split("%", 1)[0])
    if ip.ipv4_mapped is not None:  # dual-stack socket, IPv4 peer
        return binding_response(data, str(ip.ipv4_mapped), port)
    key = COOKIE_BYTES + txid
    xaddr = bytes(a ^ b for a, b in zip(ip.packed, key))
    return (
        _RESP_V6_HEAD.pack(
            BINDING_SUCCESS, 24, MAGIC_COOKIE, txid,
            ATTR_XOR_MAPPED_ADDRESS, 20, 0, 0x02, xport,
        )
        + xaddr
    )


class BareStunResponder(DatagramProtocol):
    def datagramReceived(self, data, addr):
        resp = binding_response(data, addr[0], addr[1])
        if resp is not None:
            self.transport.write(resp, addr)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: bare_stun_responder.py HOST PORT", file=sys.stderr)
        return 2
    host, port = argv[0], int(argv[1])

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    reactor.listenUDP(port, BareStunResponder(), interface=host)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
