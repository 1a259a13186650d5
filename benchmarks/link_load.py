#!/usr/bin/env python3
"""Load driver of the forwarding benchmark: a sender and a receiver link in one process.

    python benchmarks/link_load.py --mode lean --host H --port P --bootstrap ztr1:... [options]
    python benchmarks/link_load.py --mode bare --host H --port P [options]

Run by link_forwarding.py (pinned to the load CPU); prints one JSON object on
its last stdout line. Modes:

``lean``   (default) two links authenticated with the package's sans-IO
           :class:`LinkConnection` (real Noise NK, HELLO, mutual Ed25519
           auth) over plain non-blocking sockets. Once both are ACTIVE the data
           path uses the links' own Noise cipher states directly: SEND frames are
           packed into records of up to ``RECORD_TARGET`` bytes (what
           ``LinkConnection.pull`` does), one AEAD call per record and one
           ``send()`` per batch; records from the node are decrypted and only
           the fields the driver needs are read. The window protocol is kept:
           the sender honours the node's window and WINDOW_UPDATEs, the receiver
           sends WINDOW_UPDATE every half window, PINGs are answered.
``conn``   the same links, but every message goes through
           ``LinkConnection.send`` / ``pull`` / ``receive_data`` (frame objects,
           events): the package's own client path, without Twisted.
``client`` the reference client (``zentalk_relay.client.link.connect``) on the
           Twisted reactor: ``ClientLink.send`` / ``receive``. Closed loop only.
``bare``   no crypto: two plain TCP connections to bare_forwarder.py; a frame is
           ``length u32 ‖ body`` (the body starts with the sequence number).

``--padding on`` (link modes): the links offer capability PADDING, as the
reference client does, so the node pads every record it writes after the
handshake to a bucket size (zentalk_relay/link/padding.py). The driver pads
its own records too: ``conn`` and ``client`` through LinkConnection, ``lean``
with ``padding.pad`` on each record it seals; every mode drops the node's
PADDING frames. ``off`` (the default): no capabilities offered, nothing padded.
The bytes each link's socket sent and received are counted (not in ``client``
mode), per phase over its measured interval and over the whole run.

In every mode the sender keeps at most ``--window`` messages outstanding
(sent, not yet delivered to the receiver). Phases run one after another on
the same links: ``peak`` is closed loop (always ``window`` outstanding);
a number ``f`` is open loop at ``f`` × the peak just measured, a message
scheduled every 1/rate s, latency counted from its scheduled time (so a
driver or node that falls behind is charged for it). Each phase: warm-up,
measured interval, then the messages in flight are drained.

Latency is end to end: from the sender's send (or schedule) to the
receiver's read, one clock. Everything is bounded: ``--max-messages`` in
total, each phase's time, each drain (10 s), the handshake (10 s).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import linkbench  # noqa: E402

linkbench.use_checkout()

U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
U64 = struct.Struct(">Q")
RECV_BYTES = 262144
CONN_RECV_BYTES = 65536
ACK_BATCH = 256  # as zentalk_relay.client.link: ACK at once at this many ids ...
ACK_DELAY = 0.05  # ... or this long after the first unacknowledged DELIVER
MAX_ACK_IDS = 1024  # ids in one ACK frame
#: ... when padded: 3 + 1020 x 16 bytes and the length still fit one 16 KiB bucket (1024 ids would take 32 KiB)
MAX_ACK_IDS_PADDED = 1020
OUTBUF_HIGH = 262144  # stop generating while this much is unsent
DRAIN_S = 10.0


class DriverError(Exception):
    pass


def cpu_of(pid):
    return linkbench.cpu_seconds(pid) if pid else None


# -- results ---------------------------------------------------------------------------


class Phase:
    def __init__(self, name: str, rate: float | None, warmup: float, duration: float) -> None:
        self.name = name
        self.rate = rate  # None: closed loop
        self.warmup = warmup
        self.duration = duration
        self.latencies: list[float] = []
        self.delivered = 0
        self.sent = 0
        self.behind = 0.0
        self.gen_cpu = None
        self.srv_cpu = None
        self.cpus = None
        self.foreign_cpu = None
        self.kernel_cpu = None
        self.bytes = None  # socket bytes over the measured interval, by link and direction

    def result(self) -> dict:
        lat = sorted(self.latencies)
        ms = lambda q: None if not lat else round(linkbench.percentile(lat, q) * 1000, 3)  # noqa: E731
        return {
            "phase": self.name,
            "target_rate": None if self.rate is None else round(self.rate, 1),
            "rate": round(self.delivered / self.duration, 1),
            "delivered": self.delivered,
            "p50_ms": ms(50), "p90_ms": ms(90), "p99_ms": ms(99), "p999_ms": ms(99.9),
            "max_ms": None if not lat else round(lat[-1] * 1000, 3),
            "gen_cpu": self.gen_cpu, "srv_cpu": self.srv_cpu, "cpus": self.cpus,
            "foreign_cpu": self.foreign_cpu, "kernel_cpu": self.kernel_cpu,
            "behind_s": round(self.behind, 4),
            "bytes": self.bytes,
        }


# -- the shared loop -----------------------------------------------------------------------


class Driver:
    """Phases, windows, timing; subclasses move the bytes."""

    def __init__(self, args) -> None:
        self.args = args
        self.window = args.window
        ring = 1
        while ring < 4 * args.window:
            ring *= 2
        self.mask = ring - 1
        self.times = [0.0] * ring
        self.sent = 0  # sequence of the next message
        self.delivered = 0
        self.next_expected = 0
        self.out_of_order = 0
        self.receipts = 0
        self.refused = 0
        self.errors: list[str] = []
        self.phase: Phase | None = None
        self.measuring = False
        self.m_start = self.m_end = 0.0
        self.body = os.urandom(max(8, args.size) - 8)
        self.server_pid = args.server_pid

    # hooks
    def connect(self) -> None: ...
    def sockets(self) -> list[socket.socket]: ...
    def generate(self, count: int, now: float, stamps) -> int: ...
    def credit(self, now: float) -> int: ...
    def readable(self, sock: socket.socket, now: float) -> None: ...
    def flush(self) -> None: ...
    def pending_out(self) -> int: ...
    def close(self) -> None: ...

    def byte_counts(self) -> dict | None:
        """Bytes the sockets sent and received so far: sender_out, sender_in, receiver_out, receiver_in."""
        return None

    def tick(self, now: float) -> None:
        """Called on every turn of the loop (time-based work such as batched ACKs)."""

    def on_deliver(self, seq: int, now: float) -> None:
        """One message reached the receiver (the subclasses inline this on their hot path)."""
        if seq != self.next_expected:
            self.out_of_order += 1
        self.next_expected = seq + 1
        self.delivered += 1
        if self.measuring and self.m_start <= now <= self.m_end:
            self.phase.delivered += 1
            self.phase.latencies.append(now - self.times[seq & self.mask])

    def run(self) -> dict:
        args = self.args
        self.connect()
        results = []
        peak = None
        deadline_all = time.monotonic() + args.time_limit
        for spec in args.phases:
            if spec == "peak":
                phase = Phase("peak", None, args.warmup, args.duration)
            else:
                if peak is None:
                    raise DriverError("a rate phase needs a peak phase before it")
                fraction = float(spec)
                phase = Phase(f"{fraction * 100:g}% of peak", fraction * peak, args.warmup, args.duration)
            self.run_phase(phase, deadline_all)
            result = phase.result()
            results.append(result)
            if phase.rate is None:
                peak = result["rate"]
            if self.errors:
                break
        self.close()
        return {
            "mode": args.mode, "window": args.window, "size": args.size, "phases": results,
            "sent": self.sent, "delivered": self.delivered, "receipts": self.receipts, "refused": self.refused,
            "out_of_order": self.out_of_order, "errors": self.errors, "bytes": self.byte_counts(),
        }

    def run_phase(self, phase: Phase, deadline_all: float) -> None:
        args = self.args
        self.phase = phase
        perf = time.perf_counter
        t0 = perf()
        self.m_start = t0 + phase.warmup
        self.m_end = self.m_start + phase.duration
        self.measuring = True
        first_seq = self.sent
        rate = phase.rate
        cpu0 = srv0 = None
        socks = self.sockets()
        poller = select.epoll()
        fdmap = {}
        for s in socks:
            poller.register(s.fileno(), select.EPOLLIN)
            fdmap[s.fileno()] = s
        stamps = None
        window = self.window
        max_messages = args.max_messages
        sent_at_m_end = None
        try:
            while True:
                now = perf()
                if cpu0 is None and now >= self.m_start:
                    cpu0, srv0 = time.process_time(), cpu_of(self.server_pid)
                    stat0 = linkbench.cpu_stat()
                    procs0 = linkbench.all_cpu()
                    bytes0 = self.byte_counts()
                if now >= self.m_end:
                    break
                if time.monotonic() > deadline_all:
                    self.errors.append("time limit reached")
                    break
                # how many to send now
                room = window - (self.sent - self.delivered)
                if rate is not None:
                    due = int((now - t0) * rate) + 1 - (self.sent - first_seq)
                    if due < room:
                        room = due
                if room > max_messages - self.sent:
                    room = max_messages - self.sent
                if room > 0 and self.pending_out() < OUTBUF_HIGH:
                    credit = self.credit(now)
                    if room > credit:
                        room = credit
                    if room > 0:
                        if rate is None:
                            stamps = None
                        else:
                            base = self.sent - first_seq
                            stamps = (t0, base, rate)
                        self.generate(room, now, stamps)
                self.tick(now)
                if self.pending_out():
                    self.flush()
                # wait for input
                if rate is not None:
                    next_due = t0 + (self.sent - first_seq) / rate
                    timeout = max(0.0, min(next_due - perf(), 0.005))
                else:
                    timeout = 0.005
                if self.pending_out():
                    timeout = 0.0
                for fd, _ in poller.poll(timeout):
                    self.readable(fdmap[fd], perf())
                if self.errors:
                    break
                if self.sent >= max_messages and self.sent == self.delivered:
                    self.errors.append("--max-messages reached")
                    break
            end = perf()
            cpu1, srv1 = time.process_time(), cpu_of(self.server_pid)
            wall = max(1e-9, end - self.m_start)
            if cpu0 is not None:
                phase.cpus = linkbench.cpu_stat_delta(stat0, linkbench.cpu_stat())
                procs1 = linkbench.all_cpu()
                phase.foreign_cpu = round(linkbench.foreign_cpu(
                    procs0, procs1, {os.getpid(), self.server_pid}) / wall, 3)
                phase.kernel_cpu = round(linkbench.kernel_cpu(procs0, procs1) / wall, 3)
                phase.gen_cpu = round((cpu1 - cpu0) / wall, 3)
                bytes1 = self.byte_counts()
                if bytes0 is not None and bytes1 is not None:
                    phase.bytes = {key: bytes1[key] - bytes0[key] for key in bytes1}
                if srv0 is not None and srv1 is not None:
                    phase.srv_cpu = round((srv1 - srv0) / wall, 3)
            if rate is not None:
                # how far the sends lagged their schedule when the phase ended
                phase.behind = max(0.0, (end - t0) - (self.sent - first_seq) / rate)
            phase.sent = self.sent - first_seq
            sent_at_m_end = self.sent
            # drain what is in flight
            self.measuring = False
            drain_end = time.monotonic() + DRAIN_S
            while self.delivered < sent_at_m_end and time.monotonic() < drain_end and not self.errors:
                self.tick(perf())
                if self.pending_out():
                    self.flush()
                for fd, _ in poller.poll(0.0 if self.pending_out() else 0.01):
                    self.readable(fdmap[fd], perf())
            if self.delivered < sent_at_m_end and not self.errors:
                self.errors.append(f"{sent_at_m_end - self.delivered} messages not delivered {DRAIN_S:g} s "
                                   "after the phase")
        finally:
            poller.close()


# -- zentalk links -----------------------------------------------------------------------


def handshake(host: str, port: int, bootstrap, settings, timeout: float = 10.0, counts: list | None = None):
    """A blocking TCP connect and a full link handshake; returns (socket, LinkConnection, our node id).

    ``counts``, if given, gets the bytes sent and received added to its items 0 and 1."""
    from nacl.signing import SigningKey

    from zentalk_relay.link.frames import Role
    from zentalk_relay.link.session import Authenticated, Carrier, Closing, LinkConnection

    key = SigningKey.generate()
    conn = LinkConnection(
        initiator=True, role=Role.CLIENT, signing_key=key, carrier=Carrier.NOISE_STREAM, settings=settings,
        now=time.time(), remote_static=bootstrap.link_public,
        expected_peer_id=hashlib.sha256(bootstrap.ed25519_public).digest(),
    )
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    deadline = time.monotonic() + timeout
    counts = counts if counts is not None else [0, 0]
    conn.connection_made(time.time())
    for unit in conn.pull(time.time()):
        sock.sendall(unit)
        counts[0] += len(unit)
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(65536)
        if not data:
            raise DriverError("the node closed the link during the handshake")
        counts[1] += len(data)
        events = conn.receive_data(data, time.time())
        for unit in conn.pull(time.time()):
            sock.sendall(unit)
            counts[0] += len(unit)
        for event in events:
            if isinstance(event, Closing):
                raise DriverError(f"handshake refused: {event.code.label}: {event.reason}")
            if isinstance(event, Authenticated):
                sock.setblocking(False)
                return sock, conn, hashlib.sha256(bytes(key.verify_key)).digest()
        if time.monotonic() > deadline:
            raise DriverError("handshake timed out")


def link_settings(args):
    """What the driver's links offer: capability PADDING with ``--padding on`` (as the reference client), else none."""
    from zentalk_relay.link.session import LinkSettings
    from zentalk_relay.ratelimit import Rate

    capabilities = 0
    if getattr(args, "padding", "off") == "on":
        from zentalk_relay.link.frames import Capability, capability_mask

        capabilities = capability_mask(Capability.PADDING)
    return LinkSettings(window_initial=args.window_initial, messages=Rate(100000000, 60.0, 1000000),
                        capabilities=capabilities)


def padding_negotiated(conn) -> bool:
    """Whether both ends of an authenticated LinkConnection offered PADDING (so both pad)."""
    from zentalk_relay.link.frames import Capability

    return bool(conn.capabilities & (1 << Capability.PADDING))


class _Side:
    __slots__ = ("sock", "out", "inbuf", "enc", "dec", "conn", "sent", "received")

    def __init__(self, sock, conn=None) -> None:
        self.sock = sock
        self.out = bytearray()
        self.inbuf = bytearray()
        self.conn = conn
        self.enc = self.dec = None
        self.sent = self.received = 0  # socket bytes, after the handshake


class LeanDriver(Driver):
    """Handshake by LinkConnection; data path straight on the Noise cipher states."""

    def connect(self) -> None:
        from zentalk_relay.bootstrap import parse
        from zentalk_relay.link import session

        args = self.args
        bootstrap = parse(args.bootstrap)
        settings = link_settings(args)
        self.handshake_bytes = {"sender": [0, 0], "receiver": [0, 0]}
        ssock, sconn, _ = handshake(args.host, args.port, bootstrap, settings, counts=self.handshake_bytes["sender"])
        rsock, rconn, self.recipient = handshake(args.host, args.port, bootstrap, settings,
                                                 counts=self.handshake_bytes["receiver"])
        self.s, self.r = _Side(ssock, sconn), _Side(rsock, rconn)
        # PADDING on both links (both sides offered it): the node pads what it writes, and so do we
        self.padded = padding_negotiated(sconn) and padding_negotiated(rconn)
        if self.padded:
            from zentalk_relay.link.padding import pad

            self.pad = pad
        else:
            self.pad = None
        self.max_ack_ids = MAX_ACK_IDS_PADDED if self.padded else MAX_ACK_IDS
        self.record_target = session.RECORD_TARGET
        for side in (self.s, self.r):
            conn = side.conn
            side.enc, side.dec = conn._send_cipher, conn._recv_cipher
            reader = conn._reader
            side.inbuf += reader._buffer[reader._offset:]
            side.out += b"".join(conn.pull(time.time()))
        self.win_init = args.window_initial
        self.window_max = settings.window_max
        # sender: the node's window for our SENDs, as the handshake left it (the protocol's
        # initial window, or what the node announced in a WINDOW_UPDATE that came with AUTH_OK)
        self.peer_window = getattr(sconn, "_peer_window", getattr(session, "INITIAL_WINDOW", 1000))
        self.peer_consumed = getattr(sconn, "_peer_consumed", 0)
        self.paused_until = 0.0
        # receiver: our window for the node's DELIVERs (announced by LinkConnection at activation)
        self.reported = 0
        self.id_tail = os.urandom(8)
        # SEND = 0x30 ‖ message id (sequence u64 ‖ 8 random bytes) ‖ recipient ‖ body (--size bytes)
        frame_len = 1 + 16 + 32 + args.size
        self.frame_head = U16.pack(frame_len) + b"\x30"
        self.frame_tail = self.id_tail + self.recipient + os.urandom(args.size)
        self.per_record = max(1, min(args.frames_per_record or 10 ** 9,
                                     self.record_target // (frame_len + 2)))
        self.flow_control_frames = 0
        self.pings = 0
        # Protocols that have ACK: the receiver acknowledges DELIVERs in batches, as the
        # reference client does (ACK_DELAY after the first, or at once at ACK_BATCH ids)
        from zentalk_relay.link import frames as _frames
        self.ack_supported = getattr(_frames, "Ack", None) in getattr(session, "_APPLICATION", ())
        self.to_ack: list[bytes] = []
        self.ack_since = 0.0
        self.acks_sent = 0
        self.acked_ids = 0

    def sockets(self):
        return [self.s.sock, self.r.sock]

    def credit(self, now: float) -> int:
        if now < self.paused_until:
            return 0
        return self.peer_window - (self.sent - self.peer_consumed)

    def pending_out(self) -> int:
        return len(self.s.out) + len(self.r.out)

    def byte_counts(self) -> dict:
        return {"sender_out": self.s.sent, "sender_in": self.s.received,
                "receiver_out": self.r.sent, "receiver_in": self.r.received}

    def generate(self, count: int, now: float, stamps) -> int:
        times, mask = self.times, self.mask
        head, tail = self.frame_head, self.frame_tail
        pack = U64.pack
        encrypt = self.s.enc.encrypt
        if self.pad is not None:
            cipher, pad = self.s.enc, self.pad
            encrypt = lambda plaintext: cipher.encrypt(pad(plaintext))  # noqa: E731 - one call per record
        per = self.per_record
        out = self.s.out
        seq = self.sent
        end = seq + count
        parts = []
        n_in_record = 0
        if stamps is None:
            for seq in range(seq, end):
                times[seq & mask] = now
                parts += (head, pack(seq), tail)
                n_in_record += 1
                if n_in_record == per:
                    ct = encrypt(b"".join(parts))
                    out += U16.pack(len(ct))
                    out += ct
                    parts, n_in_record = [], 0
        else:
            t0, base, rate = stamps
            for i, seq in enumerate(range(seq, end), base):
                times[seq & mask] = t0 + i / rate
                parts += (head, pack(seq), tail)
                n_in_record += 1
                if n_in_record == per:
                    ct = encrypt(b"".join(parts))
                    out += U16.pack(len(ct))
                    out += ct
                    parts, n_in_record = [], 0
        if parts:
            ct = encrypt(b"".join(parts))
            out += U16.pack(len(ct))
            out += ct
        self.sent = end
        return count

    def flush(self) -> None:
        for side in (self.s, self.r):
            if side.out:
                try:
                    n = side.sock.send(side.out)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as error:
                    self.errors.append(f"send: {error}")
                    return
                side.sent += n
                del side.out[:n]

    def _seal(self, side: _Side, plaintext: bytes) -> None:
        """One record (padded when negotiated) onto a side's output."""
        if self.pad is not None:
            plaintext = self.pad(plaintext)
        ct = side.enc.encrypt(plaintext)
        side.out += U16.pack(len(ct))
        side.out += ct

    def _queue_control(self, side: _Side, frame) -> None:
        from zentalk_relay.link import frames

        raw = frames.encode(frame)
        self._seal(side, U16.pack(len(raw)) + raw)

    def readable(self, sock, now: float) -> None:
        side = self.s if sock is self.s.sock else self.r
        buf = side.inbuf
        for _ in range(8):
            try:
                data = sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                self.errors.append(f"recv: {error}")
                return
            if not data:
                self.errors.append("the node closed a link")
                return
            buf += data
            side.received += len(data)
            if len(data) < RECV_BYTES:
                break
        decrypt = side.dec.decrypt
        n = len(buf)
        off = 0
        unpack64 = U64.unpack_from
        times, mask = self.times, self.mask
        measuring = self.measuring and self.m_start <= now <= self.m_end
        phase = self.phase
        lats = phase.latencies
        deliveries = 0
        expected = self.next_expected
        out_of_order = 0
        to_ack = self.to_ack if self.ack_supported and side is self.r else None
        if to_ack is not None and not to_ack:
            self.ack_since = now
        while n - off >= 2:
            size = (buf[off] << 8) | buf[off + 1]
            if n - off - 2 < size:
                break
            pt = decrypt(bytes(buf[off + 2: off + 2 + size]))
            off += 2 + size
            p, length = 0, len(pt)
            while p < length:
                flen = (pt[p] << 8) | pt[p + 1]
                kind = pt[p + 2]
                if kind == 0x31:  # DELIVER: id = seq u64 ‖ tail
                    seq = unpack64(pt, p + 3)[0]
                    if to_ack is not None:
                        to_ack.append(pt[p + 3: p + 19])
                    if seq != expected:
                        out_of_order += 1
                    expected = seq + 1
                    deliveries += 1
                    if measuring:
                        lats.append(now - times[seq & mask])
                elif kind == 0x32:  # RECEIPT
                    self.receipts += 1
                    if pt[p + 3 + 16] != 0:
                        self.refused += 1
                elif kind == 0x7F:  # PADDING: filler at the record's end, skipped by its length
                    pass
                else:
                    self._control(side, pt[p + 2: p + 2 + flen], now)
                p += 2 + flen
        if off:
            del buf[:off]
        if deliveries:
            self.next_expected = expected
            self.out_of_order += out_of_order
            self.delivered += deliveries
            if measuring:
                phase.delivered += deliveries
            consumed = self.delivered
            if consumed - self.reported >= self.win_init // 2:
                from zentalk_relay.link.frames import WindowUpdate

                self.reported = consumed
                self._queue_control(self.r, WindowUpdate(self.win_init, consumed & 0xFFFFFFFF))

    def tick(self, now: float) -> None:
        if self.to_ack and (len(self.to_ack) >= ACK_BATCH or now - self.ack_since >= ACK_DELAY):
            self._send_acks()

    def _send_acks(self) -> None:
        ids, self.to_ack = self.to_ack, []
        step = self.max_ack_ids
        for start in range(0, len(ids), step):
            chunk = ids[start:start + step]
            raw = b"\x35" + U16.pack(len(chunk)) + b"".join(chunk)
            self._seal(self.r, U16.pack(len(raw)) + raw)
            self.acks_sent += 1
            self.acked_ids += len(chunk)

    def _control(self, side: _Side, raw: bytes, now: float) -> None:
        from zentalk_relay.link import frames

        frame = frames.decode(raw)
        kind = type(frame)
        if kind in (frames.WindowUpdate, frames.FlowControl):
            if side is self.s:
                self.peer_window = max(0, min(frame.window, self.window_max))
                delta = (frame.consumed - self.peer_consumed) & 0xFFFFFFFF
                if delta <= self.sent - self.peer_consumed:
                    self.peer_consumed += delta
                if kind is frames.FlowControl:
                    self.flow_control_frames += 1
                    self.paused_until = now + min(frame.retry_after_ms, 60_000) / 1000.0
        elif kind is frames.Ping:
            self.pings += 1
            self._queue_control(side, frames.Pong(frame.timestamp_ms, frame.nonce, frame.sequence,
                                                  int(time.time() * 1000)))
        elif kind in (frames.Close, frames.Error):
            self.errors.append(f"{frames.type_name(frame)} from the node: code {frame.code}: {frame.reason}")

    def close(self) -> None:
        for side in (self.s, self.r):
            side.sock.close()

    def run(self) -> dict:
        result = super().run()
        result.update(flow_control_frames=self.flow_control_frames, pings=self.pings,
                      frames_per_record=self.per_record, ack_frames=self.acks_sent, acked_ids=self.acked_ids,
                      padding=self.args.padding, padded=self.padded, handshake_bytes=self.handshake_bytes)
        return result


class ConnDriver(LeanDriver):
    """Every message through LinkConnection.send / pull / receive_data."""

    def connect(self) -> None:
        super().connect()
        from zentalk_relay.link.frames import Deliver, Receipt, Send
        from zentalk_relay.link.session import Closing, Received

        self._Send, self._Deliver, self._Receipt = Send, Deliver, Receipt
        self._Received, self._Closing = Received, Closing
        # hand back what the lean setup took out of the readers
        for side in (self.s, self.r):
            if side.inbuf:
                events = side.conn.receive_data(bytes(side.inbuf), time.time())
                side.inbuf.clear()
                self._events(side, events, time.perf_counter())

    def _send_acks(self) -> None:
        from zentalk_relay.link.frames import Ack

        ids, self.to_ack = self.to_ack, []
        conn = self.r.conn
        step = self.max_ack_ids
        for start in range(0, len(ids), step):
            conn.send(Ack(tuple(ids[start:start + step])), time.time())
            self.acks_sent += 1
            self.acked_ids += len(ids[start:start + step])
        for unit in conn.pull(time.time()):
            self.r.out += unit

    def credit(self, now: float) -> int:
        conn = self.s.conn
        return max(0, min(conn.credit(time.time()), conn.settings.max_backlog - conn.backlog))

    def generate(self, count: int, now: float, stamps) -> int:
        times, mask = self.times, self.mask
        conn = self.s.conn
        Send = self._Send
        tail = self.id_tail
        recipient, body = self.recipient, self.body
        wall = time.time()
        seq = self.sent
        done = 0
        for i in range(count):
            if stamps is None:
                times[seq & mask] = now
            else:
                t0, base, rate = stamps
                times[seq & mask] = t0 + (base + i) / rate
            if not conn.send(Send(U64.pack(seq) + tail, recipient, U64.pack(seq) + body), wall):
                break
            seq += 1
            done += 1
        self.sent = seq
        for unit in conn.pull(wall):
            self.s.out += unit
        return done

    def readable(self, sock, now: float) -> None:
        side = self.s if sock is self.s.sock else self.r
        for _ in range(8):
            try:
                # LengthPrefixedReader refuses more than MAX_BUFFER (4 largest records) held at
                # once, so feed it what a Twisted TCP transport would: at most 64 KiB per call
                data = sock.recv(CONN_RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                self.errors.append(f"recv: {error}")
                return
            if not data:
                self.errors.append("the node closed a link")
                return
            side.received += len(data)
            self._events(side, side.conn.receive_data(data, time.time()), now)
            if len(data) < CONN_RECV_BYTES:
                break
        for s in (self.s, self.r):
            for unit in s.conn.pull(time.time()):
                s.out += unit

    def _events(self, side, events, now: float) -> None:
        Received, Deliver, Receipt = self._Received, self._Deliver, self._Receipt
        for event in events:
            if type(event) is Received:
                frame = event.frame
                kind = type(frame)
                if kind is Deliver:
                    self.on_deliver(U64.unpack_from(frame.message_id)[0], now)
                    if self.ack_supported:
                        if not self.to_ack:
                            self.ack_since = now
                        self.to_ack.append(frame.message_id)
                elif kind is Receipt:
                    self.receipts += 1
                    if frame.status != 0:
                        self.refused += 1
                else:
                    self.errors.append(f"unexpected {kind.__name__}")
            elif type(event) is self._Closing:
                self.errors.append(f"link closed: {event.code.label}: {event.reason}")

    def run(self) -> dict:
        result = Driver.run(self)
        result.update(frames_per_record="pull()", ack_frames=self.acks_sent, acked_ids=self.acked_ids,
                      padding=self.args.padding, padded=self.padded, handshake_bytes=self.handshake_bytes)
        return result


# -- no crypto: the bare forwarder ---------------------------------------------------------


class BareDriver(Driver):
    def connect(self) -> None:
        args = self.args
        self.ssock = socket.create_connection((args.host, args.port), timeout=10)
        # the forwarder pairs connections in the order it accepts them
        time.sleep(0.05)
        self.rsock = socket.create_connection((args.host, args.port), timeout=10)
        for s in (self.ssock, self.rsock):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
        self.out = bytearray()
        self.inbuf = bytearray()
        self.head = U32.pack(8 + len(self.body))
        self.frame_len = 4 + 8 + len(self.body)
        self.sender_out = self.sender_in = self.receiver_in = 0

    def sockets(self):
        return [self.ssock, self.rsock]

    def byte_counts(self) -> dict:
        return {"sender_out": self.sender_out, "sender_in": self.sender_in,
                "receiver_out": 0, "receiver_in": self.receiver_in}

    def credit(self, now: float) -> int:
        return 1 << 30

    def pending_out(self) -> int:
        return len(self.out)

    def generate(self, count: int, now: float, stamps) -> int:
        times, mask = self.times, self.mask
        head, body = self.head, self.body
        pack = U64.pack
        seq = self.sent
        end = seq + count
        parts = []
        if stamps is None:
            for seq in range(seq, end):
                times[seq & mask] = now
                parts += (head, pack(seq), body)
        else:
            t0, base, rate = stamps
            for i, seq in enumerate(range(seq, end), base):
                times[seq & mask] = t0 + i / rate
                parts += (head, pack(seq), body)
        self.out += b"".join(parts)
        self.sent = end
        return count

    def flush(self) -> None:
        try:
            n = self.ssock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self.errors.append(f"send: {error}")
            return
        self.sender_out += n
        del self.out[:n]

    def readable(self, sock, now: float) -> None:
        if sock is self.ssock:
            try:
                data = sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                self.errors.append("the forwarder closed the sender's connection")
            self.sender_in += len(data)
            return
        buf = self.inbuf
        for _ in range(8):
            try:
                data = sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                self.errors.append(f"recv: {error}")
                return
            if not data:
                self.errors.append("the forwarder closed the receiver's connection")
                return
            buf += data
            self.receiver_in += len(data)
            if len(data) < RECV_BYTES:
                break
        n = len(buf)
        off = 0
        unpack64 = U64.unpack_from
        times, mask = self.times, self.mask
        measuring = self.measuring and self.m_start <= now <= self.m_end
        lats = self.phase.latencies
        expected = self.next_expected
        out_of_order = deliveries = 0
        while n - off >= 4:
            size = (buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3]
            if n - off - 4 < size:
                break
            seq = unpack64(buf, off + 4)[0]
            off += 4 + size
            if seq != expected:
                out_of_order += 1
            expected = seq + 1
            deliveries += 1
            if measuring:
                lats.append(now - times[seq & mask])
        if off:
            del buf[:off]
        self.next_expected = expected
        self.out_of_order += out_of_order
        self.delivered += deliveries
        if measuring:
            self.phase.delivered += deliveries

    def close(self) -> None:
        self.ssock.close()
        self.rsock.close()


# -- the reference client ------------------------------------------------------------------


def run_client(args) -> dict:
    """Closed loop through zentalk_relay.client.link on the Twisted reactor."""
    from nacl.signing import SigningKey
    from twisted.internet import defer, epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    from zentalk_relay.bootstrap import parse
    from zentalk_relay.client.link import connect

    bootstrap = parse(args.bootstrap)
    settings = link_settings(args)
    body = os.urandom(args.size)
    out: dict = {"mode": "client", "window": args.window, "size": args.size, "errors": [], "padding": args.padding}
    phase = Phase("peak", None, args.warmup, args.duration)

    async def main():
        skey, rkey = SigningKey.generate(), SigningKey.generate()
        sender = await connect(reactor, bootstrap, skey, address=(args.host, args.port), settings=settings)
        receiver = await connect(reactor, bootstrap, rkey, address=(args.host, args.port), settings=settings)
        recipient = hashlib.sha256(bytes(rkey.verify_key)).digest()
        perf = time.perf_counter
        times = {}
        state = {"sent": 0, "delivered": 0}
        t0 = perf()
        m_start, m_end = t0 + args.warmup, t0 + args.warmup + args.duration
        cpu = {}

        def send_one():
            seq = state["sent"]
            state["sent"] += 1
            times[seq] = perf()
            d = sender.send(recipient, U64.pack(seq) + body[8:], U64.pack(seq) + bytes(8))
            d.addErrback(lambda f: None if state.get("closing") else out["errors"].append(str(f.value)))

        for _ in range(args.window):
            send_one()
        while True:
            deliver = await receiver.receive()
            now = perf()
            seq = U64.unpack_from(deliver.message_id)[0]
            state["delivered"] += 1
            if m_start <= now <= m_end:
                if "cpu0" not in cpu:
                    cpu["cpu0"], cpu["srv0"] = time.process_time(), cpu_of(args.server_pid)
                    cpu["stat0"] = linkbench.cpu_stat()
                    cpu["procs0"] = linkbench.all_cpu()
                phase.delivered += 1
                phase.latencies.append(now - times.pop(seq))
            else:
                times.pop(seq, None)
            if now > m_end or out["errors"] or state["sent"] >= args.max_messages:
                break
            send_one()
        end = perf()
        wall = end - m_start
        phase.gen_cpu = round((time.process_time() - cpu["cpu0"]) / wall, 3)
        phase.cpus = linkbench.cpu_stat_delta(cpu["stat0"], linkbench.cpu_stat())
        procs1 = linkbench.all_cpu()
        phase.foreign_cpu = round(linkbench.foreign_cpu(
            cpu["procs0"], procs1, {os.getpid(), args.server_pid}) / wall, 3)
        phase.kernel_cpu = round(linkbench.kernel_cpu(cpu["procs0"], procs1) / wall, 3)
        srv1 = cpu_of(args.server_pid)
        if cpu.get("srv0") is not None and srv1 is not None:
            phase.srv_cpu = round((srv1 - cpu["srv0"]) / wall, 3)
        out["sent"], out["delivered"] = state["sent"], state["delivered"]
        state["closing"] = True
        await sender.close()
        await receiver.close()

    def done(result):
        reactor.stop()
        return result

    def failed(failure):
        out["errors"].append(failure.getErrorMessage())

    reactor.callWhenRunning(lambda: defer.ensureDeferred(main()).addErrback(failed).addBoth(done))
    reactor.callLater(args.time_limit, lambda: (out["errors"].append("time limit reached"), reactor.stop()))
    reactor.run()
    out["phases"] = [phase.result()]
    return out


# -- main -----------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("lean", "conn", "client", "bare"), default="lean")
    p.add_argument("--host", default=linkbench.HOST)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bootstrap", help="the node's bootstrap string (not for --mode bare)")
    p.add_argument("--window", type=int, default=1024, help="messages outstanding at most (default 1024)")
    p.add_argument("--window-initial", type=int, default=4096,
                   help="the node's link.window_initial; both ends must agree (default 4096)")
    p.add_argument("--size", type=int, default=1024, help="message body bytes (default 1024)")
    p.add_argument("--phases", default="peak,0.5,0.9",
                   help="comma-separated: peak (closed loop) or a fraction of the peak (open loop)")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase")
    p.add_argument("--frames-per-record", type=int, default=0,
                   help="lean mode: SEND frames per record (default: fill RECORD_TARGET like pull())")
    p.add_argument("--padding", choices=("on", "off"), default="off",
                   help="link modes: offer capability PADDING (the node then pads every record it writes, and "
                        "the driver pads its own) or nothing (default off)")
    p.add_argument("--max-messages", type=int, default=50_000_000, help="hard cap on messages sent")
    p.add_argument("--time-limit", type=float, default=600.0, help="hard cap on the whole run, seconds")
    p.add_argument("--server-pid", type=int, default=0, help="report this process's CPU use per phase")
    a = p.parse_args(argv)
    a.phases = [x.strip() for x in a.phases.split(",") if x.strip()]
    if a.mode != "bare" and not a.bootstrap:
        p.error("--bootstrap is needed for the link modes")
    if not 1 <= a.window <= 100_000 or not 8 <= a.size <= 60_000:
        p.error("--window must be 1..100000 and --size 8..60000")
    return a


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.mode == "client":
        result = run_client(args)
    else:
        driver = {"lean": LeanDriver, "conn": ConnDriver, "bare": BareDriver}[args.mode](args)
        try:
            result = driver.run()
        except (DriverError, OSError) as error:
            result = {"mode": args.mode, "errors": [f"{type(error).__name__}: {error}"], "phases": []}
    print(json.dumps(result), flush=True)
    return 1 if result.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
