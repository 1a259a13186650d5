#!/usr/bin/env python3
"""Coverage-guided fuzzing of the STUN codec and the Binding responder (atheris).

Run through ``fuzz/run``; by hand::

    PYTHONPATH=. python3 fuzz/fuzz_stun.py fuzz/corpus/stun -max_total_time=60
    PYTHONPATH=. python3 fuzz/fuzz_stun.py CRASH_FILE        # replay one input

Input layout (see :func:`split_input`): the STUN message comes first, then
the key, then a 20-byte trailer that ``FuzzedDataProvider`` reads from the
end (its integers are taken from the end of the data): source family (1
byte), source port (2), source address (16), key length (1). A raw STUN
message is therefore still a useful input by itself; the seeds in
``corpus/stun/`` are built with the full layout by ``make_stun_corpus.py``.

Every property violation raises AssertionError, which atheris reports as a
crash. The properties are listed in ``fuzz/README.md``.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import traceback

import atheris

with atheris.instrument_imports(include=["zentalk_relay"]):
    from zentalk_relay.nat import binding, stun

StunError = stun.StunError
MessageClass = stun.MessageClass
Attr = stun.Attr

#: Source address families the harness feeds the responder.
FAMILY_IPV4 = 0  # ("a.b.c.d", port), as Twisted's IPv4 UDP port delivers
FAMILY_IPV6 = 1  # ("x::y", port, flowinfo, scope_id)
FAMILY_IPV4_MAPPED = 2  # ("::ffff:a.b.c.d", port, 0, 0) from a dual-stack socket
FAMILY_IPV6_ZONE = 3  # ("fe80::y%eth0", port, 0, scope_id), link-local with a zone
FAMILIES = 4
TRAILER_SIZE = 1 + 2 + 16 + 1
MAX_KEY = 255


def split_input(data: bytes) -> tuple[bytes, bytes, tuple]:
    """The fuzzer's bytes as (message, key, source address tuple)."""
    fdp = atheris.FuzzedDataProvider(data)
    family = fdp.ConsumeIntInRange(0, FAMILIES - 1)
    port = fdp.ConsumeIntInRange(0, 0xFFFF)
    # Two 64-bit halves: atheris reads a wider integer from the front instead.
    address = fdp.ConsumeIntInRange(0, (1 << 64) - 1).to_bytes(8, "big")
    address += fdp.ConsumeIntInRange(0, (1 << 64) - 1).to_bytes(8, "big")
    key_len = min(fdp.ConsumeIntInRange(0, MAX_KEY), fdp.remaining_bytes())
    message = fdp.ConsumeBytes(fdp.remaining_bytes() - key_len)
    key = fdp.ConsumeBytes(key_len)
    if family == FAMILY_IPV4:
        source: tuple = (socket.inet_ntop(socket.AF_INET, address[:4]), port)
    elif family == FAMILY_IPV4_MAPPED:
        source = ("::ffff:" + socket.inet_ntop(socket.AF_INET, address[:4]), port, 0, 0)
    elif family == FAMILY_IPV6:
        source = (socket.inet_ntop(socket.AF_INET6, address), port, 0, 0)
    else:
        source = (socket.inet_ntop(socket.AF_INET6, b"\xfe\x80" + bytes(6) + address[8:]) + "%eth0", port, 0, 2)
    return message, key, source


def _fail(what: str, error: BaseException | None = None) -> None:
    if error is None:
        raise AssertionError(what)
    # atheris prints only the outermost traceback: carry the original one.
    original = "".join(traceback.format_exception(error)).rstrip()
    raise AssertionError(f"{what}: {type(error).__name__}: {error}\n--- original exception ---\n{original}") from error


def _only_stun_error(what: str, func, *args):
    """Call ``func``; StunError gives None, any other exception is a finding."""
    try:
        return func(*args)
    except StunError as error:
        if not isinstance(error.reason, str) or not error.reason:
            _fail(f"{what} raised StunError without a reason")
        return None
    except Exception as error:  # noqa: BLE001 - that is the property under test
        _fail(f"{what} raised something other than StunError", error)


def check_decode(data: bytes) -> stun.Message | None:
    message = _only_stun_error("stun.decode", stun.decode, data)
    if message is None:
        return None
    # The Message must describe the bytes it came from.
    if message.raw != data:
        _fail("decode: Message.raw is not the input")
    if message.classic:
        if message.transaction_id != data[4:20]:
            _fail("decode: RFC 3489 transaction id is not bytes 4-20")
    elif message.transaction_id != data[8:20] or data[4:8] != stun.MAGIC_COOKIE_BYTES:
        _fail("decode: transaction id is not bytes 8-20, or cookie mismatch")
    if len(message.attributes) > stun.MAX_ATTRIBUTES:
        _fail("decode: more attributes than MAX_ATTRIBUTES")
    for attribute in message.attributes:
        start = attribute.offset + 4
        if data[start : start + len(attribute.value)] != attribute.value:
            _fail(f"decode: attribute 0x{attribute.type:04x} value is not the bytes at its offset")
    return message


def check_codecs(value: bytes, transaction_id: bytes) -> None:
    """The value codecs raise only StunError, and what they return round-trips."""
    address = _only_stun_error("stun.decode_address", stun.decode_address, value)
    if address is not None:
        host, port = address
        if not 0 <= port <= 0xFFFF:
            _fail(f"decode_address: port {port} out of range")
        if stun.encode_address(host, port) != b"\x00" + value[1:]:
            _fail(f"decode_address: {address} does not re-encode to the value")
    xaddress = _only_stun_error("stun.decode_xor_address", stun.decode_xor_address, value, transaction_id)
    if xaddress is not None:
        host, port = xaddress
        if not 0 <= port <= 0xFFFF:
            _fail(f"decode_xor_address: port {port} out of range")
        if stun.encode_xor_address(host, port, transaction_id) != b"\x00" + value[1:]:
            _fail(f"decode_xor_address: {xaddress} does not re-encode to the value")
    error_code = _only_stun_error("stun.decode_error_code", stun.decode_error_code, value)
    if error_code is not None:
        code, reason = error_code
        if not 300 <= code <= 699 or not isinstance(reason, str):
            _fail(f"decode_error_code: {error_code!r} out of range")
    number = _only_stun_error("stun.decode_u32", stun.decode_u32, value)
    if number is not None and not 0 <= number <= 0xFFFFFFFF:
        _fail(f"decode_u32: {number} out of range")


def check_integrity(message: stun.Message, key: bytes) -> None:
    try:
        result = stun.check_integrity(message, key)
    except Exception as error:  # noqa: BLE001
        _fail("stun.check_integrity raised", error)
    if result is not True and result is not False:
        _fail(f"check_integrity returned {result!r}, not a bool")


def _accounted(stats: binding.BindingStats) -> int:
    return sum(stats.request_counts().values()) + sum(stats.dropped.values())


def _source_ip(source: tuple):
    host = source[0].split("%", 1)[0]
    address = ipaddress.ip_address(host)
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


#: One responder for the whole run, as in the node: its counters accumulate.
RESPONDER = binding.BindingResponder("x")


def check_respond(data: bytes, source: tuple, request: stun.Message | None) -> None:
    before = _accounted(RESPONDER.stats)
    try:
        reply = RESPONDER.respond(data, source)
    except Exception as error:  # noqa: BLE001
        _fail(f"BindingResponder.respond raised for source {source!r}", error)
    counted = _accounted(RESPONDER.stats) - before
    if counted != 1:
        _fail(f"respond accounted for this datagram {counted} times, not once")
    if reply is None:
        return
    if not isinstance(reply, bytes):
        _fail(f"respond returned {type(reply).__name__}, not bytes")
    try:
        answer = stun.decode(reply)
    except Exception as error:  # noqa: BLE001
        _fail(f"the reply to source {source!r} does not decode: {reply.hex()}", error)
    # A reply answers a well-formed request, same transaction, same method.
    if request is None or request.cls is not MessageClass.REQUEST:
        _fail("respond answered something that is not a well-formed request")
    if answer.transaction_id != request.transaction_id or answer.classic != request.classic:
        _fail("the reply does not echo the request's transaction id")
    if answer.method != request.method:
        _fail("the reply's method is not the request's")
    if answer.cls is MessageClass.SUCCESS:
        if request.classic:
            value = answer.get(Attr.MAPPED_ADDRESS)
            mapped = None if value is None else _only_stun_error("MAPPED-ADDRESS", stun.decode_address, value)
        else:
            value = answer.get(Attr.XOR_MAPPED_ADDRESS)
            mapped = (
                None
                if value is None
                else _only_stun_error("XOR-MAPPED-ADDRESS", stun.decode_xor_address, value, answer.transaction_id)
            )
        if mapped is None:
            _fail("a success reply without a decodable mapped address")
        if (ipaddress.ip_address(mapped[0]), mapped[1]) != (_source_ip(source), source[1]):
            _fail(f"the reply maps {mapped!r}, the source was {source!r}")
    elif answer.cls is MessageClass.ERROR:
        value = answer.get(Attr.ERROR_CODE)
        if value is None or _only_stun_error("ERROR-CODE", stun.decode_error_code, value) is None:
            _fail("an error reply without a decodable ERROR-CODE")
    else:
        _fail(f"the reply is a {answer.cls.name}, not a success or an error")


def TestOneInput(data: bytes) -> None:
    message_bytes, key, source = split_input(data)
    message = check_decode(message_bytes)
    if message is not None:
        check_integrity(message, key)
        for attribute in message.attributes:
            check_codecs(attribute.value, message.transaction_id)
        tid = message.transaction_id
    else:
        tid = message_bytes[8:20].ljust(12, b"\x00")
    # The key bytes double as one more attribute value, so the codecs see
    # arbitrary values even when the message itself does not decode.
    check_codecs(key, tid)
    check_respond(message_bytes, source, message)


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
