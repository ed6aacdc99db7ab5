"""The audit log: append-only JSON lines, each chained to the one before by BLAKE3.

Every record is one line::

    {"seq":N,"ts":"...Z","event":"mint","actor":"cli","data":{...},"prev":"<hex>","hash":"<hex>"}

``hash`` is BLAKE3-256 of the line's own bytes with the ``,"hash":"<hex>"`` suffix
removed (the body up to and including ``"prev":"..."`` plus the closing ``}``), and
``prev`` is the previous record's ``hash`` (64 zeros for the first). So:

* an edited byte anywhere in record *k* breaks record *k*'s own hash, and
  :func:`verify` names record *k*, not its successor;
* a removed or reordered record shows up as a ``seq`` out of step, or a ``prev`` that
  does not match, at the first line where it happens;
* a removed *last* record is caught by the head file (``audit.jsonl.head``: the last
  ``seq`` and ``hash``, replaced atomically after each append).

A hash chain is tamper-*evident*, not tamper-proof: someone who can write the files can
rewrite the whole chain and head. Copying the head elsewhere (or a ``ron audit verify``
run that prints it) pins the history up to that point.

Appends are serialised across processes by a lock, written with one ``write`` and
``fsync``ed before :meth:`AuditLog.append` returns: it is an audit log, so a recorded
event must survive a crash. A torn last line (a crash mid-write, never acknowledged)
is cut off by the next append. Records never carry secrets: callers pass token ids,
key ids and tenants, never tokens or keys.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from ron.auth.files import ensure_private_dir, locked
from ron.fsutil import atomic_write_bytes, fsync_dir
from ron.proto.envelope import ErrorCode, RonError

__all__ = [
    "CONFIG_RELOAD",
    "GENESIS",
    "MINT",
    "QUARANTINE",
    "REVOKE",
    "ROTATE",
    "AuditLog",
    "AuditRecord",
    "AuditReport",
    "head_path",
    "record_line",
    "verify",
]

MINT = "mint"
ROTATE = "rotate"
REVOKE = "revoke"
CONFIG_RELOAD = "config_reload"
QUARANTINE = "quarantine"

GENESIS = "0" * 64
MAX_RECORD = 16 * 1024
FIELDS = ("seq", "ts", "event", "actor", "data", "prev", "hash")

_EVENT = re.compile(r"[a-z][a-z0-9_]{0,31}", re.ASCII)
_LINE = re.compile(rb'(\{.*),"hash":"([0-9a-f]{64})"\}', re.S)
_SEQ = re.compile(rb'\{"seq":([1-9][0-9]{0,18}),')


@dataclass(frozen=True, slots=True)
class AuditRecord:
    seq: int
    ts: str
    event: str
    actor: str
    data: dict[str, Any]
    prev: str
    hash: str


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The outcome of :func:`verify`. ``line`` is 1-based (line N holds record N)."""

    ok: bool
    records: int
    line: int | None = None
    reason: str | None = None
    head: str | None = None  # hash of the last record, to pin elsewhere


def head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def _rfc3339(t: float) -> str:
    ms = int(t * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def record_line(
    seq: int, ts: str, event: str, actor: str, data: Mapping[str, Any], prev: str
) -> bytes:
    """The exact bytes of a record (without the newline); the format is normative."""
    body = json.dumps(
        {"seq": seq, "ts": ts, "event": event, "actor": actor, "data": dict(data), "prev": prev},
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    ).encode("ascii")
    digest = blake3.blake3(body).hexdigest()
    return body[:-1] + f',"hash":"{digest}"}}'.encode("ascii")


class AuditLog:
    """Appends records to ``path`` (created 0600 in a 0700 directory on first use)."""

    def __init__(
        self, path: Path, *, actor: str = "node", clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self.actor = actor
        self._clock = clock

    def append(
        self,
        event: str,
        data: Mapping[str, Any] | None = None,
        *,
        actor: str | None = None,
        now: float | None = None,
    ) -> AuditRecord:
        """Append one record and fsync it; returns what was written.

        Raises ``RonError(INTERNAL)`` if the log's last record cannot be read (a
        privileged action is not performed unaudited on top of a broken chain).
        """
        if _EVENT.fullmatch(event) is None:
            raise RonError(ErrorCode.BAD_REQUEST, "audit event must be 1-32 of [a-z0-9_]")
        who = self.actor if actor is None else actor
        ts = _rfc3339(self._clock() if now is None else now)
        payload = dict(data or {})
        ensure_private_dir(self.path.parent)
        with locked(self.path):
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                seq, prev = _tail(fd, self.path)
                try:
                    line = record_line(seq + 1, ts, event, who, payload, prev)
                except (TypeError, ValueError) as exc:
                    raise RonError(
                        ErrorCode.BAD_REQUEST, f"audit data is not JSON: {exc}"
                    ) from None
                if len(line) > MAX_RECORD:
                    raise RonError(ErrorCode.BAD_REQUEST, "audit record is too large")
                _write_all(fd, line + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_dir(self.path.parent)
            record = AuditRecord(
                seq + 1, ts, event, who, payload, prev, line[-66:-2].decode("ascii")
            )
            head = json.dumps({"seq": record.seq, "hash": record.hash}) + "\n"
            atomic_write_bytes(head_path(self.path), head.encode(), mode=0o600)
        return record


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _tail(fd: int, path: Path) -> tuple[int, str]:
    """The last complete record's (seq, hash); cuts off a torn, unacknowledged tail."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0, GENESIS
    # Enough to hold a whole last record and a torn one after it.
    start = max(0, size - 2 * (MAX_RECORD + 1))
    chunk = os.pread(fd, size - start, start)
    end = chunk.rfind(b"\n")
    if end < 0 and start:
        raise RonError(ErrorCode.INTERNAL, f"audit log {path} ends in an overlong line")
    if end != len(chunk) - 1:
        os.ftruncate(fd, start + end + 1)
        os.fsync(fd)
        if start + end + 1 == 0:
            return 0, GENESIS
    body = chunk[:end]
    begin = body.rfind(b"\n") + 1
    if begin == 0 and start:
        raise RonError(ErrorCode.INTERNAL, f"audit log {path} ends in an overlong line")
    m = _LINE.fullmatch(body[begin:])
    seq = _SEQ.match(body, begin)
    if m is None or seq is None:
        raise RonError(
            ErrorCode.INTERNAL,
            f"audit log {path}: the last record is unreadable; run `ron audit verify`",
        )
    return int(seq.group(1)), m.group(2).decode("ascii")


# --- verification ---------------------------------------------------------------------


def verify(path: Path) -> AuditReport:
    """Check the whole chain and the head; name the first bad record (1-based line)."""
    prev = before_last = GENESIS
    count = 0
    try:
        f = path.open("rb")
    except FileNotFoundError:
        if head_path(path).exists():
            return AuditReport(False, 0, 1, "the log is missing but its head file exists")
        return AuditReport(True, 0)
    with f:
        while True:
            raw = f.readline(MAX_RECORD + 2)
            if not raw:
                break
            n = count + 1
            if not raw.endswith(b"\n"):
                if len(raw) > MAX_RECORD:
                    return AuditReport(False, count, n, "record is longer than the limit")
                return AuditReport(False, count, n, "incomplete last record (torn write)")
            reason, digest = _check_line(raw[:-1], n, prev)
            if reason is not None:
                return AuditReport(False, count, n, reason)
            before_last, prev, count = prev, digest, n
    return _check_head(path, count, prev, before_last)


def _check_line(line: bytes, seq: int, prev: str) -> tuple[str | None, str]:
    m = _LINE.fullmatch(line)
    if m is None:
        return "not a record line (no trailing hash)", ""
    body = m.group(1) + b"}"
    digest = m.group(2).decode("ascii")
    if blake3.blake3(body).hexdigest() != digest:
        return "record was modified: its hash does not match its content", digest
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return "record is not valid JSON", digest
    if not isinstance(doc, dict) or tuple(doc) != FIELDS:
        return "record does not have the fields " + ",".join(FIELDS), digest
    if not isinstance(doc["seq"], int) or isinstance(doc["seq"], bool) or doc["seq"] != seq:
        return (
            f"seq is {doc['seq']!r} where {seq} was expected: a record was removed, "
            "inserted or reordered"
        ), digest
    if doc["prev"] != prev:
        return "prev does not match the hash of the record before it (chain broken)", digest
    if not isinstance(doc["event"], str) or _EVENT.fullmatch(doc["event"]) is None:
        return "bad event name", digest
    if not isinstance(doc["ts"], str) or not isinstance(doc["actor"], str):
        return "bad ts or actor", digest
    if not isinstance(doc["data"], dict):
        return "data is not an object", digest
    return None, digest


def _check_head(path: Path, count: int, last_hash: str, before_last: str) -> AuditReport:
    hp = head_path(path)
    try:
        head = json.loads(hp.read_bytes())
        head_seq, head_hash = head["seq"], head["hash"]
        if not isinstance(head_seq, int) or not isinstance(head_hash, str):
            raise TypeError
    except FileNotFoundError:
        if count == 0:
            return AuditReport(True, 0)
        return AuditReport(
            False, count, None, "head file is missing: removed trailing records would go unseen"
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return AuditReport(False, count, None, "head file is unreadable")
    if head_seq > count:
        return AuditReport(
            False,
            count,
            count + 1,
            f"records {count + 1}..{head_seq} are missing (the log was truncated)",
        )
    if head_seq < count - 1:
        # One record ahead of the head is a crash between the append and the head
        # update; more is not something the appender does.
        return AuditReport(
            False, count, head_seq + 1, f"records after {head_seq} were added behind the head"
        )
    if head_seq == count and head_hash != last_hash:
        return AuditReport(False, count, count, "last record does not match the head")
    # One record past the head: the head must match the record before the last.
    if head_seq == count - 1 > 0 and head_hash != before_last:
        return AuditReport(False, count, head_seq, "record does not match the head")
    return AuditReport(True, count, head=last_hash)
