#!/usr/bin/env python3
"""Coverage-guided fuzzing of the PEX codec and the peer book (atheris).

Run through ``fuzz/run``; by hand::

    PYTHONPATH=. python3 fuzz/fuzz_pex.py fuzz/corpus/pex -max_total_time=60

The first byte picks the target: a PEX request body, or a response body whose
entries are then offered to a peer book. Properties: the decoders raise only
PexError; a decoded response re-encodes to exactly its bytes; learning never
raises, never admits an entry the address policy refuses, and never lets the
book share a peer it has not verified.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["zentalk_relay"]):
    from zentalk_relay.pex import codec
    from zentalk_relay.pex.book import VERIFIED, PeerBook, Policy, address_problem

OWN = b"\x00" * 32


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    target, body = data[0] % 2, data[1:]
    if target == 0:
        try:
            maximum = codec.decode_request(body)
        except codec.PexError:
            return
        assert codec.encode_request(maximum) == body
        return
    try:
        entries = codec.decode_response(body)
    except codec.PexError:
        return
    assert codec.encode_response(entries) == body, "a response does not re-encode to its bytes"
    book = PeerBook(OWN, Policy(min_uptime=0, allow_private_addresses=bool(data[0] & 2)))
    for entry in entries:
        problem = book.learn(entry, 0.0)
        if problem is None:
            assert address_problem(entry.host, entry.port, bool(data[0] & 2)) is None
    assert all(peer.state != VERIFIED for peer in book.peers.values())
    assert book.shareable(1.0, requester=b"\x01" * 32) == [], "an unverified peer would be shared"


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
