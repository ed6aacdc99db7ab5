"""The revocation list: token ids that must no longer verify, with a rising sequence.

Every new revocation takes the next sequence number (1, 2, 3...), and the list's
``seq`` is the highest one ever issued, so a peer or a client that has seen sequence
``n`` fetches ``entries_since(n)`` and is up to date; ``seq`` never goes down, even if
entries are one day pruned. Revoking an id that is already revoked changes nothing and
returns the existing entry (idempotent, so a retried ``ron cap revoke`` is harmless).

A token id names a minted token *and every attenuation of it* (attenuating keeps the
id), so one revocation withdraws the whole family.

The list is a JSON file replaced atomically under a lock; every verifying process
re-reads it when its stat signature changes, so a revocation applies without restart.
Token ids are not secrets (a token is useless without its signature), but the file
lives in the private auth directory with the keys anyway.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ron.auth.files import StatSignature, locked, stat_signature, write_secret
from ron.proto.envelope import ErrorCode, RonError

__all__ = ["RevocationEntry", "RevocationList", "parse_since", "revocations_reply"]

FORMAT = "ron-revocations/1"
_TOKEN_ID = re.compile(r"[0-9a-f]{32}", re.ASCII)


@dataclass(frozen=True, slots=True)
class RevocationEntry:
    seq: int
    token_id: str  # 32 lowercase hex digits
    revoked_at: int  # unix seconds

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "token_id": self.token_id, "revoked_at": self.revoked_at}


class RevocationList:
    """Revoked token ids, backed by ``path`` or by memory when None."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._seq = 0
        self._entries: tuple[RevocationEntry, ...] = ()
        self._ids: dict[str, RevocationEntry] = {}
        self._sig: StatSignature | None = None
        self.refresh()

    @property
    def seq(self) -> int:
        """The highest sequence number issued; 0 before the first revocation."""
        return self._seq

    def is_revoked(self, token_id: str) -> bool:
        return token_id in self._ids

    def entries_since(self, n: int) -> list[RevocationEntry]:
        """Entries with a sequence number above ``n``, in order."""
        return [e for e in self._entries if e.seq > n]

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the file if it changed; True when it did (RonError if unusable)."""
        if self.path is None:
            return False
        sig = stat_signature(self.path)
        if sig == self._sig and not force:
            return False
        self._sig = sig
        try:
            data = None if sig is None else self.path.read_bytes()
        except FileNotFoundError:
            data = None
        if data is None:
            self._set(0, ())
        else:
            self._set(*_decode(data, self.path))
        return True

    def revoke(self, token_id: str, now: float | None = None) -> tuple[RevocationEntry, bool]:
        """Revoke ``token_id``; returns its entry and True when it is new."""
        if not isinstance(token_id, str) or _TOKEN_ID.fullmatch(token_id) is None:
            raise RonError(ErrorCode.BAD_REQUEST, "a token id is 32 lowercase hex digits")
        with self._mutation():
            existing = self._ids.get(token_id)
            if existing is not None:
                return existing, False
            entry = RevocationEntry(
                self._seq + 1, token_id, int(time.time() if now is None else now)
            )
            entries = (*self._entries, entry)
            if self.path is not None:
                write_secret(self.path, _encode(entry.seq, entries))
                self._sig = stat_signature(self.path)
            self._set(entry.seq, entries)
            return entry, True

    @contextlib.contextmanager
    def _mutation(self) -> Iterator[None]:
        if self.path is None:
            yield
            return
        with locked(self.path):
            self.refresh(force=True)
            yield

    def _set(self, seq: int, entries: tuple[RevocationEntry, ...]) -> None:
        self._seq = seq
        self._entries = entries
        self._ids = {e.token_id: e for e in entries}


def _encode(seq: int, entries: tuple[RevocationEntry, ...]) -> bytes:
    doc = {"format": FORMAT, "seq": seq, "entries": [e.to_json() for e in entries]}
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


def _decode(data: bytes, path: Path) -> tuple[int, tuple[RevocationEntry, ...]]:
    def corrupt(why: str) -> RonError:
        return RonError(ErrorCode.INTERNAL, f"revocation list {path} is unusable: {why}")

    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise corrupt("not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise corrupt(f"not a {FORMAT} document")
    seq, raw = _uint(doc.get("seq")), doc.get("entries")
    if seq is None or not isinstance(raw, list):
        raise corrupt("bad seq or entries")
    entries: list[RevocationEntry] = []
    last = 0
    for e in raw:
        if not isinstance(e, dict):
            raise corrupt("an entry is not an object")
        n, tid, at = _uint(e.get("seq")), e.get("token_id"), _uint(e.get("revoked_at"))
        if n is None or at is None or not isinstance(tid, str):
            raise corrupt("bad entry")
        if _TOKEN_ID.fullmatch(tid) is None or n <= last or n > seq:
            raise corrupt("entries out of order or malformed")
        last = n
        entries.append(RevocationEntry(n, tid, at))
    return seq, tuple(entries)


def _uint(value: object) -> int | None:
    """``value`` if it is a non-negative JSON integer, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


# --- the revocation feed (GET /v1/caps/revocations, on the gateway and the admin API)

MAX_SINCE_DIGITS = 19


def parse_since(value: str | None) -> int:
    """``since`` as a non-negative integer (absent: 0); anything else is 400."""
    if value is None:
        return 0
    if not value.isdigit() or not value.isascii() or len(value) > MAX_SINCE_DIGITS:
        raise RonError(ErrorCode.BAD_REQUEST, "since must be a non-negative integer")
    return int(value)


def revocations_reply(seq: int, entries: list[RevocationEntry]) -> dict[str, object]:
    """The feed's JSON; ``seq`` never claims less than the entries it carries (a revoke
    may land between reading the sequence and reading the entries)."""
    top = max([seq, *(e.seq for e in entries)])
    return {"seq": top, "entries": [e.to_json() for e in entries]}
