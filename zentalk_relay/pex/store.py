"""The peer book on disk: one SQLite table, so the network is not forgotten on restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .book import Peer

_SCHEMA = """
CREATE TABLE IF NOT EXISTS peers (
    node_id BLOB PRIMARY KEY, host TEXT NOT NULL, port INTEGER NOT NULL, link_key BLOB NOT NULL,
    capabilities INTEGER NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL,
    verified_since REAL, latency_ms INTEGER NOT NULL, failures INTEGER NOT NULL,
    opted_out INTEGER NOT NULL, private INTEGER NOT NULL
) WITHOUT ROWID;
"""
_COLUMNS = ("node_id, host, port, link_key, capabilities, first_seen, last_seen, verified_since, latency_ms, "
            "failures, opted_out, private")


class PeerStore:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def load(self) -> list[Peer]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM peers").fetchall()
        return [Peer(bytes(r[0]), r[1], r[2], bytes(r[3]), r[4], r[5], r[6], r[7], r[8], r[9], bool(r[10]),
                     bool(r[11])) for r in rows]

    def save(self, changed: list[Peer], removed: list[bytes]) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(f"INSERT OR REPLACE INTO peers ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", [
                (p.node_id, p.host, p.port, p.link_key, p.capabilities, p.first_seen, p.last_seen, p.verified_since,
                 p.latency_ms, p.failures, int(p.opted_out), int(p.private)) for p in changed])
            db.executemany("DELETE FROM peers WHERE node_id = ?", [(node_id,) for node_id in removed])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()
