"""Bare Twisted length-prefixed forwarders: the references for the forwarding benchmark.

    python benchmarks/bare_forwarder.py HOST PORT [--prefix 4] [--style tuned|intn]

Connections are paired in the order they are accepted (1st with 2nd, 3rd
with 4th, ...); each complete frame (``length u32`` or ``length u16``, then
that many bytes) that arrives on one connection is written, prefix included,
to its partner. Nothing else is parsed: no crypto, no frame types, no
receipts, no flow control beyond TCP's, no metrics, no logging per frame.
Frames that arrive before the partner connects are held. Two styles, both on
the epoll reactor:

``tuned`` (default) a plain ``Protocol`` written for speed: one buffer, the
          frames sliced out of it and written with one ``transport.write``
          each; the cost floor of routing framed messages between two
          connections from Twisted in Python.
``intn``  the conventional way: ``twisted.protocols.basic.Int32StringReceiver``
          (``Int16StringReceiver`` with ``--prefix 2``), the partner's
          ``sendString`` once per frame, as issue #3 describes its reference
          ("a bare Twisted length-prefixed forwarder with no crypto").

Prints ``listening on HOST:PORT`` once it listens (PORT 0: the OS picks).
"""

import struct
import sys

from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import Int16StringReceiver, Int32StringReceiver

_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")


class Forwarder(Protocol):
    def __init__(self, factory, prefix):
        self.factory = factory
        self.partner = None
        self.held = []
        self.buf = b""
        self.prefix = prefix
        self.unpack = (_U32 if prefix == 4 else _U16).unpack_from

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        waiting = self.factory.waiting
        if waiting is not None and waiting.transport is not None and waiting.partner is None:
            self.factory.waiting = None
            self.partner, waiting.partner = waiting, self
            for frame in waiting.held:
                self.transport.write(frame)
            waiting.held = []
        else:
            self.factory.waiting = self

    def dataReceived(self, data):
        buf = self.buf + data if self.buf else data
        prefix, unpack = self.prefix, self.unpack
        partner = self.partner
        write = partner.transport.write if partner is not None else self.held.append
        offset, end = 0, len(buf)
        while end - offset >= prefix:
            stop = offset + prefix + unpack(buf, offset)[0]
            if stop > end:
                break
            write(buf[offset:stop])
            offset = stop
        self.buf = buf[offset:] if offset < end else b""

    def connectionLost(self, reason):
        if self.factory.waiting is self:
            self.factory.waiting = None
        partner, self.partner = self.partner, None
        if partner is not None:
            partner.partner = None
            partner.transport.loseConnection()


class _Paired:
    """Pairing in accept order, for the string-receiver forwarders."""

    def connectionMade(self):
        self.transport.setTcpNoDelay(True)
        waiting = self.factory.waiting
        if waiting is not None and waiting.transport is not None and waiting.partner is None:
            self.factory.waiting = None
            self.partner, waiting.partner = waiting, self
            for string in waiting.held:
                self.sendString(string)
            waiting.held = []
        else:
            self.factory.waiting = self

    def stringReceived(self, string):
        partner = self.partner
        if partner is None:
            self.held.append(string)
        else:
            partner.sendString(string)

    def connectionLost(self, reason):
        if self.factory.waiting is self:
            self.factory.waiting = None
        partner, self.partner = self.partner, None
        if partner is not None:
            partner.partner = None
            partner.transport.loseConnection()


class StringForwarder32(_Paired, Int32StringReceiver):
    MAX_LENGTH = 1 << 20

    def __init__(self, factory):
        self.factory = factory
        self.partner = None
        self.held = []


class StringForwarder16(_Paired, Int16StringReceiver):
    def __init__(self, factory):
        self.factory = factory
        self.partner = None
        self.held = []


class ForwarderFactory(Factory):
    noisy = False

    def __init__(self, prefix, style="tuned"):
        self.prefix = prefix
        self.style = style
        self.waiting = None

    def buildProtocol(self, addr):
        if self.style == "intn":
            return (StringForwarder32 if self.prefix == 4 else StringForwarder16)(self)
        return Forwarder(self, self.prefix)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    prefix, style = 4, "tuned"
    if "--prefix" in argv:
        i = argv.index("--prefix")
        prefix = int(argv[i + 1])
        del argv[i:i + 2]
    if "--style" in argv:
        i = argv.index("--style")
        style = argv[i + 1]
        del argv[i:i + 2]
    if len(argv) != 2 or prefix not in (2, 4) or style not in ("tuned", "intn"):
        print("usage: bare_forwarder.py HOST PORT [--prefix 2|4] [--style tuned|intn]", file=sys.stderr)
        return 2
    host, port = argv[0], int(argv[1])

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    listening = reactor.listenTCP(port, ForwarderFactory(prefix, style), interface=host, backlog=1024)
    print(f"listening on {host}:{listening.getHost().port}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
