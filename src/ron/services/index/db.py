"""The index database: address -> bundle location, in SQLite (WAL).

One writer (the index service) and any number of reader processes (gateway workers
resolving on the hot path) share the file: WAL lets readers proceed while the writer
commits. Rows are keyed by integer rowid with a unique index on the hash, because
random 32-byte keys as the primary key scatter inserts across the whole B-tree.

``synchronous=NORMAL`` in WAL mode survives the death of any process (SIGKILL included);
only a power loss can drop the last commits, and the bundles themselves are fsynced, so
the index can be rebuilt from them (:func:`records_from_disk`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    id          INTEGER PRIMARY KEY,
    hex         TEXT NOT NULL,
    tld         TEXT NOT NULL,
    bundle      TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    mime        TEXT NOT NULL,
    created_utc TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS objects_hex ON objects(hex);
"""


@dataclass(frozen=True)
class IndexRecord:
    """Where a bundle lives (``bundle`` is relative to the data dir) and what it holds."""

    hex: str
    tld: str
    bundle: str
    bytes: int
    mime: str
    created_utc: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexRecord:
        return cls(
            hex=str(data["hex"]),
            tld=str(data["tld"]),
            bundle=str(data["bundle"]),
            bytes=int(data["bytes"]),
            mime=str(data["mime"]),
            created_utc=str(data["created_utc"]),
        )


_COLUMNS = "hex, tld, bundle, bytes, mime, created_utc"


def _record(row: tuple[Any, ...]) -> IndexRecord:
    return IndexRecord(*row)


class IndexDB:
    """A connection to the index; ``readonly=True`` for the many reader processes."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        if readonly:
            self._db = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=5
            )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, timeout=5)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._db.commit()
        self._db.execute("PRAGMA busy_timeout=5000")

    def close(self) -> None:
        self._db.close()

    def resolve(self, hex_digest: str) -> IndexRecord | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM objects WHERE hex = ?", (hex_digest,)
        ).fetchone()
        return None if row is None else _record(row)

    def put(self, record: IndexRecord) -> bool:
        """Insert or refresh a record; True when the address was new."""
        with self._db:
            existed = (
                self._db.execute("SELECT 1 FROM objects WHERE hex = ?", (record.hex,)).fetchone()
                is not None
            )
            self._db.execute(
                f"INSERT INTO objects ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(hex) DO UPDATE SET tld=excluded.tld, bundle=excluded.bundle, "
                "bytes=excluded.bytes, mime=excluded.mime",
                (
                    record.hex,
                    record.tld,
                    record.bundle,
                    record.bytes,
                    record.mime,
                    record.created_utc,
                ),
            )
        return not existed

    def delete(self, hex_digest: str) -> bool:
        with self._db:
            cur = self._db.execute("DELETE FROM objects WHERE hex = ?", (hex_digest,))
        return cur.rowcount > 0

    def list(self, after: str = "", limit: int = 100) -> list[IndexRecord]:
        """Records in address order after ``after``: stable pagination for listings."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM objects WHERE hex > ? ORDER BY hex LIMIT ?",
            (after, max(1, min(limit, 1000))),
        ).fetchall()
        return [_record(r) for r in rows]

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM objects").fetchone()[0])

    def iter_all(self) -> Iterator[IndexRecord]:
        after = ""
        while batch := self.list(after, 500):
            yield from batch
            after = batch[-1].hex
