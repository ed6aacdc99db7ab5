"""Receipt handles: ``<msg_id>.<lease>.<token>``.

A receipt names one lease of one message. ``lease`` counts the times the message was
leased (it never goes back, not even on redrive), and ``token`` is 128 random bits
drawn for that lease and kept in the database. So a receipt cannot be guessed from a
msg_id, and a receipt from an earlier lease is recognisably *stale* (409) instead of
silently acting on someone else's lease. Receipts are bearer tokens: never logged.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
from dataclasses import dataclass

from ron.proto.envelope import ErrorCode, RonError

_RECEIPT_RE = re.compile(r"([0-9A-HJKMNP-TV-Z]{26})\.([0-9]{1,18})\.([A-Za-z0-9_-]{22})")
MAX_RECEIPT_LEN = 26 + 1 + 18 + 1 + 22


@dataclass(frozen=True)
class Receipt:
    msg_id: str
    lease: int
    token: str

    def __str__(self) -> str:
        return f"{self.msg_id}.{self.lease}.{self.token}"

    def matches(self, lease: int, token: str | None) -> bool:
        """Constant-time: timing must not tell a forger how much of a token was right."""
        if token is None:
            return False
        return lease == self.lease and hmac.compare_digest(token, self.token)


def new_tokens(n: int) -> list[str]:
    """``n`` fresh 128-bit tokens (one read of the OS's CSPRNG for all of them)."""
    raw = secrets.token_bytes(16 * n)
    return [
        base64.urlsafe_b64encode(raw[i : i + 16]).rstrip(b"=").decode("ascii")
        for i in range(0, 16 * n, 16)
    ]


def parse_receipt(text: object) -> Receipt:
    """A receipt from a client; malformed ones are 400 (not 409: they were never valid)."""
    if not isinstance(text, str) or len(text) > MAX_RECEIPT_LEN:
        raise RonError(ErrorCode.BAD_REQUEST, "malformed receipt")
    m = _RECEIPT_RE.fullmatch(text)
    if m is None:
        raise RonError(ErrorCode.BAD_REQUEST, "malformed receipt")
    return Receipt(m.group(1), int(m.group(2)), m.group(3))


def parse_receipts(items: object, *, limit: int = 100) -> list[Receipt]:
    if not isinstance(items, list | tuple) or not 1 <= len(items) <= limit:
        raise RonError(ErrorCode.BAD_REQUEST, f"receipts must be a list of 1..{limit} strings")
    return [parse_receipt(item) for item in items]
