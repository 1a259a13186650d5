#!/usr/bin/env python3
"""Coverage-guided fuzzing of the DHT: the KRPC codec and the node's query handler (atheris).

Run through ``fuzz/run``; by hand::

    PYTHONPATH=. python3 fuzz/fuzz_krpc.py fuzz/corpus/krpc -max_total_time=60
    PYTHONPATH=. python3 fuzz/fuzz_krpc.py CRASH_FILE           # replay one input
    PYTHONPATH=. python3 fuzz/fuzz_krpc.py --make-corpus         # rewrite fuzz/corpus/krpc/

Input layout (:func:`split_input`): ``mode u8 ‖ IPv4 source (4) ‖ port u16 ‖
datagram``; shorter inputs are padded with zeros. ``mode``:

- bits 0-1, the target: 0 the datagram is a query (or anything) from the
  source to a node; 1, 2, 3 the node has just sent a ``find_node``,
  ``get_peers`` or ``get`` of its own lookup and the datagram is the answer:
  every ``TTTT`` in it becomes that query's transaction id, every
  ``IIIIIIIIIIIIIIIIIIII`` the id of the node it was sent to, and the source
  is that node (so the fuzzer reaches response handling and the lookup state
  machine);
- bit 2: every ``KKKKKKKK`` becomes a valid write token for the source IP
  (so ``announce_peer`` and ``put`` reach the stores);
- bit 3: the source arrives IPv4-mapped, as from a dual-stack socket;
- bit 4: then 3 seconds pass and the node's timer runs;
- bit 5: the ``get`` (target 3) is for the mutable item (with its salt), not
  the immutable one.

Each input gets a fresh node (fixed id, seeded ``rng``) with 30 good nodes in
its table, peers under one info-hash, and an immutable and a mutable item, so
a crash replays exactly. Properties (a violation raises AssertionError, which
atheris reports as a crash):

- ``krpc.decode`` raises nothing but ``KrpcError``, with a code from
  ``ErrorCode``, a reason from ``REASONS``, a ``tid`` only for a query; what
  decodes encodes to bytes that decode to the same message;
- ``DhtNode.handle`` and ``tick`` raise nothing; everything they return is a
  datagram that decodes;
- an answer (a response or error with the datagram's transaction id) goes
  only to a query's source, at most one per datagram, and never to anything
  that did not decode as a query (or failed as one with a readable ``t``);
  to an unverified source it is at most 3 times the datagram's size
  (``DhtConfig.amplification``); besides it, at most one ``ping`` (the
  verification of an unknown querier) goes to the source;
- an answer to one of the node's own queries is never answered; the node only
  sends queries then;
- after ``tick(now)``, ``next_deadline()`` is later than ``now``; finished
  lookups give nodes nearest first, at most k, and items that verify.

The module imports atheris only when it runs as the fuzzer, so
``tests/unit/test_dht_fuzz.py`` runs the same checks on the seeds and on
cases from hypothesis.
"""

from __future__ import annotations

import random
import sys
import traceback
from pathlib import Path

from nacl.signing import SigningKey

if __name__ == "__main__" and "--make-corpus" not in sys.argv:  # fuzzing: instrument the package
    import atheris

    with atheris.instrument_imports(include=["zentalk_relay"]):
        from zentalk_relay.dht import krpc, node as dhtnode
        from zentalk_relay.dht.items import Item
        from zentalk_relay.dht.routing import distance
else:  # imported by the unit tests: no atheris needed
    atheris = None
    from zentalk_relay.dht import krpc, node as dhtnode
    from zentalk_relay.dht.items import Item
    from zentalk_relay.dht.routing import distance

from zentalk_relay.ratelimit import Rate

KrpcError = krpc.KrpcError

TARGET_SERVER, TARGET_FIND_NODE, TARGET_GET_PEERS, TARGET_GET = range(4)
MODE_TOKEN = 0x04
MODE_MAPPED = 0x08
MODE_TICK = 0x10
MODE_MUTABLE = 0x20
HEADER = 7
TID_PLACEHOLDER = b"TTTT"
TOKEN_PLACEHOLDER = b"KKKKKKKK"
ID_PLACEHOLDER = b"I" * 20

OWN_ID = bytes.fromhex("5fbfbff10c5d6a4ec8a88e4c6ab4c28b95eee401")
INFO_HASH = b"zentalk relay hash!!"
LOOKUP_TARGET = bytes.fromhex("a5d43220bc8f112a3d426c84764f8c2a1150e616")
SIGNING_KEY = SigningKey(bytes(range(32)))
IMMUTABLE = Item.immutable(b"12:Hello World!")
MUTABLE = Item.signed(SIGNING_KEY, b"d1:ai1ee", 7, b"zentalk-relay")
CONFIG = dhtnode.DhtConfig(rate=Rate(limit=10**9, period=1.0, burst=10**9))
TABLE = [krpc.NodeInfo(random.Random(i).randbytes(20), f"203.0.{i}.1", 6881) for i in range(30)]


def split_input(data: bytes) -> tuple[int, tuple, bytes]:
    """The fuzzer's bytes as (mode, source address tuple, datagram)."""
    header = data[:HEADER].ljust(HEADER, b"\x00")
    mode = header[0]
    ip = ".".join(str(b) for b in header[1:5])
    port = int.from_bytes(header[5:7], "big") or 1
    source: tuple = ("::ffff:" + ip, port, 0, 0) if mode & MODE_MAPPED else (ip, port)
    return mode, source, data[HEADER:]


def make_input(mode: int, ip: str, port: int, datagram: bytes) -> bytes:
    return bytes([mode]) + bytes(int(part) for part in ip.split(".")) + port.to_bytes(2, "big") + datagram


def _fail(what: str, error: BaseException | None = None) -> None:
    if error is None:
        raise AssertionError(what)
    original = "".join(traceback.format_exception(error)).rstrip()
    raise AssertionError(f"{what}: {type(error).__name__}: {error}\n--- original exception ---\n{original}") from error


def fresh_node() -> dhtnode.DhtNode:
    node = dhtnode.DhtNode(OWN_ID, now=0.0, rng=random.Random(1), config=CONFIG)
    for info in TABLE:
        node.table.heard_from(info.id, info.address, 0.0, responded=True)
    node.peers.announce(INFO_HASH, ("192.0.2.1", 6881), 0.0)
    node.peers.announce(INFO_HASH, ("2001:db8::1", 6881), 0.0)
    node.items.put(IMMUTABLE, 0.0)
    node.items.put(MUTABLE, 0.0)
    return node


def check_decode(data: bytes):
    """decode raises only KrpcError; returns (message or None, the error or None)."""
    try:
        message = krpc.decode(data)
    except KrpcError as error:
        if error.reason not in krpc.REASONS or not isinstance(error.code, krpc.ErrorCode):
            _fail(f"KrpcError with reason {error.reason!r} code {error.code!r}")
        if error.tid is not None and type(error.tid) is not bytes:
            _fail("KrpcError.tid is not bytes")
        return None, error
    except Exception as error:  # noqa: BLE001 - that is the property under test
        _fail("krpc.decode raised something other than KrpcError", error)
    try:
        again = krpc.decode(krpc.encode(message))
    except Exception as error:  # noqa: BLE001
        _fail(f"{message!r} does not re-encode to something that decodes", error)
    if again != message:
        _fail(f"round trip changed the message: {message!r} -> {again!r}")
    return message, None


def _outputs(what: str, out) -> list[tuple]:
    if not isinstance(out, list):
        _fail(f"{what} returned {type(out).__name__}, not a list")
    decoded = []
    for datagram in out:
        if not isinstance(datagram, dhtnode.Datagram) or type(datagram.data) is not bytes:
            _fail(f"{what} returned {datagram!r}")
        try:
            decoded.append((krpc.decode(datagram.data), datagram))
        except Exception as error:  # noqa: BLE001
            _fail(f"{what} sent a datagram that does not decode: {datagram.data!r}", error)
    return decoded


def _plain(source: tuple) -> tuple[str, int]:
    host = source[0]
    return (host[7:] if host.startswith("::ffff:") else host), source[1]


def check_server(node, data: bytes, source: tuple, now: float, message, error) -> None:
    address = _plain(source)
    verified = node.table.is_verified(address, now)
    try:
        out = node.handle(data, source, now)
    except Exception as exc:  # noqa: BLE001
        _fail(f"DhtNode.handle raised for source {source!r}", exc)
    sent = _outputs("handle", out)
    answerable = isinstance(message, krpc.QUERY_TYPES) or (error is not None and error.tid is not None)
    tid = message.tid if isinstance(message, krpc.QUERY_TYPES) else (error.tid if error is not None else None)
    answers = [(m, d) for m, d in sent if isinstance(m, (krpc.Response, krpc.ErrorMessage))]
    others = [(m, d) for m, d in sent if not isinstance(m, (krpc.Response, krpc.ErrorMessage))]
    if len(answers) > 1:
        _fail(f"{len(answers)} answers to one datagram")
    for answer, datagram in answers:
        if not answerable:
            _fail(f"answered {message!r} / {error!r}, which is not a query")
        if answer.tid != tid or datagram.address != address:
            _fail(f"answer {answer!r} to {datagram.address!r}: wrong tid or address")
        if not verified and len(datagram.data) > node.config.amplification * len(data):
            _fail(f"answer of {len(datagram.data)} bytes to a query of {len(data)} from an unverified source")
        if isinstance(answer, krpc.Response) and answer.sender != node.node_id:
            _fail("a response that is not in our name")
        if isinstance(message, krpc.Ping) and isinstance(answer, krpc.ErrorMessage):
            _fail("a well-formed ping was refused")
    if len(others) > 1 or any(not isinstance(m, krpc.Ping) or d.address != address for m, d in others):
        _fail(f"sent more than one verification ping to the source: {others!r}")


def check_response(node, target: int, data: bytes, mutable: bool) -> None:
    """The datagram answers the first query of a lookup the node just started."""
    now = 1.0
    if target == TARGET_FIND_NODE:
        _, out = node.find_node(LOOKUP_TARGET, now)
    elif target == TARGET_GET_PEERS:
        _, out = node.get_peers(INFO_HASH, now)
    elif mutable:
        _, out = node.get(MUTABLE.target, now, salt=MUTABLE.salt)
    else:
        _, out = node.get(IMMUTABLE.target, now)
    first = out[0]
    tid = krpc.decode(first.data).tid
    data = data.replace(TID_PLACEHOLDER, tid).replace(ID_PLACEHOLDER, node.table.by_address(first.address).id)
    message, error = check_decode(data)
    if isinstance(message, krpc.QUERY_TYPES) or (error is not None and error.tid is not None):
        # Not an answer after all: a query from the node we asked.
        check_server(node, data, first.address, now + 0.1, message, error)
        return
    try:
        replies = node.handle(data, first.address, now + 0.1)
    except Exception as exc:  # noqa: BLE001
        _fail("DhtNode.handle raised on an answer to our query", exc)
    for reply, _ in _outputs("handle", replies):
        if not isinstance(reply, krpc.QUERY_TYPES):
            _fail(f"the node answered an answer: {reply!r}")


def check_tick(node, now: float) -> None:
    """Run the node's timer at ``now``, then at each deadline until its lookups are over (40 at most)."""
    for _ in range(40):
        try:
            out = node.tick(now)
            deadline = node.next_deadline()
            events = node.take_events()
            gauges = node.gauges(now)
        except Exception as exc:  # noqa: BLE001
            _fail("tick / next_deadline / take_events / gauges raised", exc)
        for message, _ in _outputs("tick", out):
            if not isinstance(message, krpc.QUERY_TYPES):
                _fail(f"tick sent {message!r}, not a query")
        if not deadline > now:
            _fail(f"next_deadline {deadline} is not after tick({now})")
        for event in events:
            if isinstance(event, dhtnode.OperationDone):
                result = event.result
                nodes = list(result.nodes)
                if len(nodes) > node.config.k or nodes != sorted(nodes, key=lambda n: distance(n.id, result.target)):
                    _fail(f"lookup result not the nearest first: {nodes!r}")
                if result.item is not None and (not result.item.verify() or result.item.target != result.target):
                    _fail(f"lookup returned an item that does not verify: {result.item!r}")
        if not gauges["operations"]:
            return
        now = deadline


def check(data: bytes) -> None:
    mode, source, datagram = split_input(data)
    node = fresh_node()
    target = mode & 0x03
    now = 1.0
    if target == TARGET_SERVER:
        if mode & MODE_TOKEN:
            datagram = datagram.replace(TOKEN_PLACEHOLDER, node.tokens.issue(_plain(source)[0], now))
        message, error = check_decode(datagram)
        check_server(node, datagram, source, now, message, error)
    else:
        check_response(node, target, datagram, bool(mode & MODE_MUTABLE))
    if mode & MODE_TICK:
        check_tick(node, now + 3.0)


def TestOneInput(data: bytes) -> None:
    check(data)


# -- seeds --------------------------------------------------------------------------

CORPUS = Path(__file__).resolve().parent / "corpus" / "krpc"
OTHER = bytes.fromhex("1b0321dd1bb1fe518101ceef99462b947a01ff41")


def seeds() -> dict[str, bytes]:
    """The seed corpus: every query, answers of every shape, refusals, the BEP examples."""
    K = TOKEN_PLACEHOLDER
    T = TID_PLACEHOLDER
    I = ID_PLACEHOLDER  # noqa: E741
    src = ("198.51.100.7", 6881)
    new_item = Item.signed(SIGNING_KEY, b"d1:ai2ee", 8, b"zentalk-relay")
    old_item = Item.signed(SIGNING_KEY, b"d1:ai0ee", 6, b"zentalk-relay")
    queries = {
        "ping": krpc.Ping(b"aa", OTHER),
        "ping_ro_version": krpc.Ping(b"aa", OTHER, read_only=True, client=b"LT\x02\x00"),
        "find_node": krpc.FindNode(b"aa", OTHER, LOOKUP_TARGET),
        "find_node_want": krpc.FindNode(b"ab", OTHER, LOOKUP_TARGET, want=(b"n4", b"n6")),
        "get_peers": krpc.GetPeers(b"aa", OTHER, INFO_HASH),
        "announce_peer": krpc.AnnouncePeer(b"aa", OTHER, INFO_HASH, 6881, K),
        "announce_peer_implied": krpc.AnnouncePeer(b"aa", OTHER, INFO_HASH, 0, K, implied_port=True, seed=True),
        "announce_peer_bad_token": krpc.AnnouncePeer(b"aa", OTHER, INFO_HASH, 6881, b"12345678"),
        "get_immutable": krpc.GetItem(b"aa", OTHER, IMMUTABLE.target),
        "get_mutable": krpc.GetItem(b"aa", OTHER, MUTABLE.target),
        "get_mutable_seq": krpc.GetItem(b"aa", OTHER, MUTABLE.target, seq=7),
        "get_immutable_padded": krpc.GetItem(b"aa", OTHER, IMMUTABLE.target, padding=400),
        "put_immutable": krpc.PutItem(b"aa", OTHER, K, b"4:spam"),
        "put_mutable_newer": krpc.PutItem(b"aa", OTHER, K, new_item.value, new_item.key, new_item.signature,
                                          new_item.seq, new_item.salt, cas=7),
        "put_mutable_cas_mismatch": krpc.PutItem(b"aa", OTHER, K, new_item.value, new_item.key, new_item.signature,
                                                 new_item.seq, new_item.salt, cas=3),
        "put_mutable_old_seq": krpc.PutItem(b"aa", OTHER, K, old_item.value, old_item.key, old_item.signature,
                                            old_item.seq, old_item.salt),
        "put_mutable_bad_signature": krpc.PutItem(b"aa", OTHER, K, b"i9e", new_item.key, new_item.signature, 8,
                                                  new_item.salt),
        "put_salt_too_big": krpc.PutItem(b"aa", OTHER, K, b"i9e", new_item.key, new_item.signature, 8, b"s" * 65),
        "put_value_too_big": krpc.PutItem(b"aa", OTHER, K, b"997:" + b"x" * 997),
    }
    out = {}
    for name, query in queries.items():
        mode = MODE_TOKEN if K in krpc.encode(query) else 0
        out["query_" + name] = make_input(mode, *src, krpc.encode(query))
    out["query_from_mapped_source"] = make_input(MODE_MAPPED, *src, krpc.encode(queries["find_node"]))
    out["query_then_timer"] = make_input(MODE_TICK, *src, krpc.encode(queries["get_peers"]))
    out["query_from_table_node"] = make_input(0, "203.0.3.1", 6881, krpc.encode(queries["get_peers"]))
    out["query_unknown_method"] = make_input(0, *src, b"d1:ad2:id20:" + OTHER + b"e1:q4:vote1:t2:aa1:y1:qe")
    out["query_missing_target"] = make_input(0, *src, b"d1:ad2:id20:" + OTHER + b"e1:q9:find_node1:t2:aa1:y1:qe")
    out["query_tiny"] = make_input(0, *src, b"d1:t0:1:y1:qe")
    out["garbage"] = make_input(0, *src, b"\xffnot bencoding at all")
    out["bep5_ping"] = make_input(0, *src, b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe")
    out["bep5_error"] = make_input(0, *src, b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee")
    nodes = tuple(TABLE[:8])
    answers = {
        TARGET_FIND_NODE: {
            "nodes": krpc.Response(T, I, nodes=nodes, your_ip=("198.51.100.7", 6881), client=b"LT\x02\x00"),
            "empty": krpc.Response(T, I, nodes=()),
            "wrong_id": krpc.Response(T, OTHER, nodes=nodes),
            "error": krpc.ErrorMessage(T, 202, "Server Error"),
        },
        TARGET_GET_PEERS: {
            "values": krpc.Response(T, I, nodes=nodes, values=(("192.0.2.9", 1), ("2001:db8::9", 2)),
                                    token=b"tok"),
        },
        TARGET_GET: {
            "immutable": krpc.Response(T, I, nodes=nodes, token=b"t", value=IMMUTABLE.value),
            "mutable": krpc.Response(T, I, token=b"t", value=MUTABLE.value, key=MUTABLE.key,
                                     signature=MUTABLE.signature, seq=MUTABLE.seq),
        },
    }
    for target, cases in answers.items():
        for name, answer in cases.items():
            mode = target | MODE_TICK | (MODE_MUTABLE if name == "mutable" else 0)
            out[f"answer_{target}_{name}"] = make_input(mode, *src, krpc.encode(answer))
    return out


def make_corpus() -> None:
    CORPUS.mkdir(parents=True, exist_ok=True)
    for path in CORPUS.iterdir():
        path.unlink()
    for name, data in sorted(seeds().items()):
        check(data)  # every seed passes the harness
        (CORPUS / name).write_bytes(data)
    print(f"wrote {len(seeds())} seeds to {CORPUS}")


def main() -> None:
    if "--make-corpus" in sys.argv:
        make_corpus()
        return
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
