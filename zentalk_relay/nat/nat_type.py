"""NAT behaviour discovery, the client side of RFC 5780, sans-IO.

:class:`NatTypeProbe` runs the tests of RFC 5780 section 4 one after the
other against a STUN server that has an alternate address:

1. **Test I**: a Binding request to the server; the mapped address, and
   OTHER-ADDRESS (without it the server does not do RFC 5780, and only the
   mapped address is learnt).
2. **Mapping** (4.3): Binding to the alternate IP with the primary port. The
   same mapped address means endpoint-independent mapping; otherwise Binding
   to the alternate IP and port: the same as the second mapping means
   address-dependent, else address-and-port-dependent.
3. **Filtering** (4.4): Binding to the primary with CHANGE-REQUEST "change IP
   and port". An answer means endpoint-independent filtering; silence, then
   CHANGE-REQUEST "change port": an answer means address-dependent, silence
   address-and-port-dependent.

The filtering tests run right after test I, before the mapping tests send
to the alternate address: a NAT whose filter depends on the addresses it
has sent to would otherwise already let the alternate address in.

Datagrams to send come out as ``(destination, bytes)``; the caller feeds back
what arrives and calls :meth:`NatTypeProbe.timeout` at
:meth:`NatTypeProbe.next_deadline`. Requests are retransmitted after ``rto``,
doubling, ``retries`` times; a test that stays unanswered counts as silence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from . import stun
from .stun import Attr, MessageClass, Method, StunError

ENDPOINT_INDEPENDENT = "endpoint-independent"
ADDRESS_DEPENDENT = "address-dependent"
ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
UNKNOWN = "unknown"

Address = tuple  # (host, port)


@dataclass(frozen=True, slots=True)
class NatBehaviour:
    """What the probe learnt."""

    #: The server answered at all (False: UDP is blocked, or the server is down).
    reachable: bool
    mapped: Address | None = None
    #: The server's alternate address (OTHER-ADDRESS), None if it does not do RFC 5780.
    other: Address | None = None
    mapping: str = UNKNOWN
    filtering: str = UNKNOWN
    #: True when the mapped address differs from the local one; None when the local one is unknown.
    behind_nat: bool | None = None

    @property
    def rfc5780(self) -> bool:
        return self.other is not None

    @property
    def classic(self) -> str:
        """The RFC 3489 name, for people who know NATs by those."""
        if not self.reachable:
            return "UDP blocked"
        if self.mapping == UNKNOWN or self.filtering == UNKNOWN:
            return "no NAT" if self.behind_nat is False else UNKNOWN
        if self.behind_nat is False:
            return "open internet" if self.filtering == ENDPOINT_INDEPENDENT else "firewall"
        if self.mapping != ENDPOINT_INDEPENDENT:
            return "symmetric"
        return {
            ENDPOINT_INDEPENDENT: "full cone",
            ADDRESS_DEPENDENT: "restricted cone",
            ADDRESS_AND_PORT_DEPENDENT: "port-restricted cone",
        }[self.filtering]


def _same(a: Address | None, b: Address | None) -> bool:
    return a is not None and b is not None and tuple(a[:2]) == tuple(b[:2])


class NatTypeProbe:
    """The RFC 5780 tests against one server, one socket, one test at a time."""

    def __init__(self, server: Address, rng: random.Random, local: Address | None = None,
                 rto: float = 0.2, retries: int = 3) -> None:
        self.server = (server[0], server[1])
        self.local = local
        self._rng = rng
        self._rto = rto
        self._retries = retries
        self.result: NatBehaviour | None = None
        self._test = ""
        self._destination: Address = self.server
        self._request = b""
        self._tid = b""
        self._sent = 0
        self._deadline: float | None = None
        self._mapped: Address | None = None
        self._other: Address | None = None
        self._mapped2: Address | None = None
        self._mapping = UNKNOWN
        self._filtering = UNKNOWN
        self._heard = False

    # -- the caller's side -----------------------------------------------------

    def start(self, now: float) -> list:
        return self._send("test1", self.server, (), now)

    def next_deadline(self) -> float | None:
        return None if self.result is not None else self._deadline

    def receive(self, data: bytes, source: Address, now: float) -> list:
        """A datagram on the probe's socket; stray or malformed ones are ignored."""
        if self.result is not None:
            return []
        try:
            message = stun.decode(data)
        except StunError:
            return []
        if message.transaction_id != self._tid or message.method != Method.BINDING:
            return []
        self._heard = True
        if message.cls is not MessageClass.SUCCESS:
            # An error (a server that refuses CHANGE-REQUEST, say): stop with what is known.
            return self._finish()
        mapped = None
        try:
            value = message.get(Attr.XOR_MAPPED_ADDRESS)
            if value is not None:
                mapped = stun.decode_xor_address(value, message.transaction_id)
            elif (value := message.get(Attr.MAPPED_ADDRESS)) is not None:
                mapped = stun.decode_address(value)
            other = message.get(Attr.OTHER_ADDRESS)
            other_address = stun.decode_address(other) if other is not None else None
        except StunError:
            return []
        if self._test == "test1":
            self._other = other_address
        return self._answered(mapped, now)

    def timeout(self, now: float) -> list:
        if self.result is not None or self._deadline is None or now < self._deadline:
            return []
        if self._sent <= self._retries:
            self._sent += 1
            self._deadline = now + self._rto * (2 ** (self._sent - 1))
            return [(self._destination, self._request)]
        return self._silence(now)

    # -- the tests -------------------------------------------------------------------

    def _send(self, test: str, destination: Address, attributes, now: float) -> list:
        self._test = test
        self._destination = (destination[0], destination[1])
        self._tid = self._rng.randbytes(12)
        self._request = stun.encode(Method.BINDING, MessageClass.REQUEST, self._tid, attributes)
        self._sent = 1
        self._deadline = now + self._rto
        return [(self._destination, self._request)]

    def _finish(self) -> list:
        behind = None if self.local is None or self._mapped is None else not _same(self._mapped, self.local)
        self.result = NatBehaviour(reachable=self._heard, mapped=self._mapped, other=self._other,
                                   mapping=self._mapping, filtering=self._filtering, behind_nat=behind)
        self._deadline = None
        return []

    def _answered(self, mapped: Address | None, now: float) -> list:
        test = self._test
        if test == "test1":
            self._mapped = mapped
            if mapped is None or self._other is None:
                return self._finish()
            # Filtering first: until now the socket has sent to the primary
            # address only, so a NAT's filter has opened for nothing else.
            return self._send("filtering2", self.server, ((Attr.CHANGE_REQUEST, b"\0\0\0\x06"),), now)
        if test == "filtering2":
            self._filtering = ENDPOINT_INDEPENDENT
            return self._mapping_tests(now)
        if test == "filtering3":
            self._filtering = ADDRESS_DEPENDENT
            return self._mapping_tests(now)
        if test == "mapping2":
            if _same(mapped, self._mapped):
                self._mapping = ENDPOINT_INDEPENDENT
                return self._finish()
            self._mapped2 = mapped
            return self._send("mapping3", self._other, (), now)
        if test == "mapping3":
            self._mapping = ADDRESS_DEPENDENT if _same(mapped, self._mapped2) else ADDRESS_AND_PORT_DEPENDENT
            return self._finish()
        return []

    def _silence(self, now: float) -> list:
        test = self._test
        if test == "test1":
            return self._finish()
        if test == "filtering2":
            return self._send("filtering3", self.server, ((Attr.CHANGE_REQUEST, b"\0\0\0\x02"),), now)
        if test == "filtering3":
            self._filtering = ADDRESS_AND_PORT_DEPENDENT
            return self._mapping_tests(now)
        return self._finish()  # a mapping test unanswered: the mapping stays unknown

    def _mapping_tests(self, now: float) -> list:
        return self._send("mapping2", (self._other[0], self.server[1]), (), now)
