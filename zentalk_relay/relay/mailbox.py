"""The durable mailbox: messages for offline recipients, in SQLite.

Plain Python over the standard library's ``sqlite3`` (blocking; the relay
service runs it in one dedicated thread). WAL mode with ``synchronous=FULL``:
a message is on disk when :meth:`MailboxStore.put_many` returns, which is
when the relay acknowledges it, so one commit serves a whole batch (group
commit). Message ids deduplicate per recipient, including ids already
acknowledged (kept as tombstones until the TTL), so a sender's retry never
shows a message twice. Only the owner of an address reads it: every query
takes the authenticated recipient.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

SCHEMA_VERSION = 1
MAX_SYNC_LIMIT = 500
#: Times kept in the mailbox are rounded down to this many seconds: when a
#: message arrived matters to its reader to the minute, and to nobody else.
TIME_GRANULARITY = 60.0


def blurred(now: float) -> float:
    return now - now % TIME_GRANULARITY

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    cursor     INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient  BLOB NOT NULL,
    message_id BLOB NOT NULL,
    body       BLOB NOT NULL,
    stored_at  REAL NOT NULL,
    expires_at REAL NOT NULL,
    UNIQUE (recipient, message_id)
);
CREATE INDEX IF NOT EXISTS messages_by_recipient ON messages (recipient, cursor);
CREATE INDEX IF NOT EXISTS messages_by_expiry ON messages (expires_at);
CREATE TABLE IF NOT EXISTS acknowledged (
    recipient  BLOB NOT NULL,
    message_id BLOB NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (recipient, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS acknowledged_by_expiry ON acknowledged (expires_at);
"""


class PutResult(Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # already stored or already acknowledged: success for the sender
    RECIPIENT_FULL = "recipient_full"
    MAILBOX_FULL = "mailbox_full"
    TOO_LARGE = "too_large"


@dataclass(frozen=True, slots=True)
class Limits:
    ttl: float = 7 * 24 * 3600.0
    max_message_bytes: int = 65536
    per_recipient_messages: int = 10000
    per_recipient_bytes: int = 64 * 1024 * 1024
    total_bytes: int = 4 * 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Stored:
    cursor: int
    message_id: bytes
    stored_at: float
    body: bytes


@dataclass(frozen=True, slots=True)
class Page:
    messages: tuple[Stored, ...]
    has_more: bool
    next_cursor: int


@dataclass(slots=True)
class MailboxStats:
    """What happened, for metrics; plain counts."""

    stored: int = 0
    duplicates: int = 0
    delivered: int = 0  # acknowledged by their owner
    expired: int = 0
    commits: int = 0  # transactions of put_many (group commits)
    refused: dict[str, int] | None = None

    def refuse(self, reason: str) -> None:
        if self.refused is None:
            self.refused = {}
        self.refused[reason] = self.refused.get(reason, 0) + 1


class MailboxStore:
    def __init__(self, path: Path, limits: Limits = Limits()) -> None:
        self.path = path
        self.limits = limits
        self.stats = MailboxStats()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM messages").fetchone()
        self._count, self._bytes = row
        self._per_recipient: dict[bytes, list[int]] = {}
        for recipient, count, size in self._db.execute(
                "SELECT recipient, COUNT(*), SUM(LENGTH(body)) FROM messages GROUP BY recipient"):
            self._per_recipient[bytes(recipient)] = [count, size]

    def close(self) -> None:
        self._db.close()

    # -- writing ---------------------------------------------------------------

    def put_many(self, items: list[tuple[bytes, bytes, bytes]], now: float) -> list[PutResult]:
        """Store (recipient, message_id, body) items in one transaction; durable on return."""
        results: list[PutResult] = []
        limits = self.limits
        db = self._db
        stored_at = blurred(now)
        db.execute("BEGIN IMMEDIATE")
        try:
            for recipient, message_id, body in items:
                size = len(body)
                if size > limits.max_message_bytes:
                    results.append(PutResult.TOO_LARGE)
                    continue
                if db.execute("SELECT 1 FROM acknowledged WHERE recipient = ? AND message_id = ?",
                              (recipient, message_id)).fetchone():
                    results.append(PutResult.DUPLICATE)
                    continue
                usage = self._per_recipient.get(recipient, [0, 0])
                if usage[0] + 1 > limits.per_recipient_messages or usage[1] + size > limits.per_recipient_bytes:
                    results.append(PutResult.RECIPIENT_FULL)
                    continue
                if self._bytes + size > limits.total_bytes:
                    results.append(PutResult.MAILBOX_FULL)
                    continue
                cursor = db.execute(
                    "INSERT OR IGNORE INTO messages (recipient, message_id, body, stored_at, expires_at) "
                    "VALUES (?, ?, ?, ?, ?)", (recipient, message_id, body, stored_at, stored_at + limits.ttl))
                if cursor.rowcount == 0:
                    results.append(PutResult.DUPLICATE)
                    continue
                usage = self._per_recipient.setdefault(recipient, [0, 0])
                usage[0] += 1
                usage[1] += size
                self._count += 1
                self._bytes += size
                results.append(PutResult.STORED)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._reload_usage()
            raise
        self.stats.commits += 1
        for result in results:
            if result is PutResult.STORED:
                self.stats.stored += 1
            elif result is PutResult.DUPLICATE:
                self.stats.duplicates += 1
            else:
                self.stats.refuse(result.value)
        return results

    def _reload_usage(self) -> None:
        self._count, self._bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM messages").fetchone()
        self._per_recipient = {
            bytes(r): [c, s] for r, c, s in self._db.execute(
                "SELECT recipient, COUNT(*), SUM(LENGTH(body)) FROM messages GROUP BY recipient")}

    # -- reading -----------------------------------------------------------------

    def fetch(self, recipient: bytes, cursor: int, limit: int, now: float) -> Page:
        """Messages for ``recipient`` after ``cursor``, oldest first."""
        limit = max(1, min(limit, MAX_SYNC_LIMIT))
        rows = self._db.execute(
            "SELECT cursor, message_id, stored_at, body FROM messages "
            "WHERE recipient = ? AND cursor > ? AND expires_at > ? ORDER BY cursor LIMIT ?",
            (recipient, cursor, now, limit + 1)).fetchall()
        has_more = len(rows) > limit
        rows = rows[:limit]
        messages = tuple(Stored(c, bytes(m), s, bytes(b)) for c, m, s, b in rows)
        return Page(messages, has_more, messages[-1].cursor if messages else cursor)

    def acknowledge(self, recipient: bytes, message_ids: list[bytes], now: float) -> int:
        """Delete acknowledged messages; remember their ids until they would have expired."""
        removed = 0
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for message_id in message_ids:
                row = db.execute("SELECT LENGTH(body) FROM messages WHERE recipient = ? AND message_id = ?",
                                 (recipient, message_id)).fetchone()
                db.execute("INSERT OR REPLACE INTO acknowledged VALUES (?, ?, ?)",
                           (recipient, message_id, blurred(now) + self.limits.ttl))
                if row is None:
                    continue
                db.execute("DELETE FROM messages WHERE recipient = ? AND message_id = ?", (recipient, message_id))
                removed += 1
                usage = self._per_recipient.get(recipient)
                if usage is not None:
                    usage[0] -= 1
                    usage[1] -= row[0]
                    if usage[0] <= 0:
                        del self._per_recipient[recipient]
                self._count -= 1
                self._bytes -= row[0]
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._reload_usage()
            raise
        self.stats.delivered += removed
        return removed

    def purge(self, now: float) -> int:
        """Drop expired messages and tombstones; returns how many messages expired."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            expired = db.execute("DELETE FROM messages WHERE expires_at <= ?", (now,)).rowcount
            db.execute("DELETE FROM acknowledged WHERE expires_at <= ?", (now,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        if expired:
            self._reload_usage()
            self.stats.expired += expired
        return expired

    # -- views -------------------------------------------------------------------

    @property
    def depth(self) -> int:
        return self._count

    @property
    def size(self) -> int:
        return self._bytes

    def pending_for(self, recipient: bytes) -> int:
        usage = self._per_recipient.get(recipient)
        return 0 if usage is None else usage[0]
