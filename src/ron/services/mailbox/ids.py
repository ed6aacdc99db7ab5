"""Message ids: ULIDs made in bulk, without an object per id.

A msg_id is a ULID (48-bit millisecond timestamp, 80 random bits, 26 characters of
Crockford base32), and ids made within one millisecond count up from one random draw,
as python-ulid's default generator does. Why not that generator: ``str(ULID())`` costs
about 10 us, a tenth of a whole single-message send, and a batch pays it per message;
here a batch costs one clock read, at most one ``urandom``, and per id eight lookups in
a table of character pairs (the standard library's base32 is pure Python in 3.11).
"""

from __future__ import annotations

import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Every 10-bit value as its two base32 characters: 130 bits are 13 lookups.
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_RANDOM_BITS = 80
_RANDOM_MAX = (1 << _RANDOM_BITS) - 1


def encode_ulids(ms: int, randoms: list[int]) -> list[str]:
    """The 26-character texts of the ULIDs with timestamp ``ms`` and these randoms."""
    p = _PAIRS
    head = p[ms >> 40 & 1023] + p[ms >> 30 & 1023] + p[ms >> 20 & 1023]
    head += p[ms >> 10 & 1023] + p[ms & 1023]
    return [
        head
        + p[r >> 70 & 1023]
        + p[r >> 60 & 1023]
        + p[r >> 50 & 1023]
        + p[r >> 40 & 1023]
        + p[r >> 30 & 1023]
        + p[r >> 20 & 1023]
        + p[r >> 10 & 1023]
        + p[r & 1023]
        for r in randoms
    ]


class UlidSource:
    """Monotonic ULIDs for one writer (the mailbox process; not thread-safe)."""

    __slots__ = ("_last_ms", "_last_random")

    def __init__(self) -> None:
        self._last_ms = -1
        self._last_random = 0

    def take(self, n: int) -> list[str]:
        """``n`` new ids, each greater than the last one made in the same millisecond."""
        ms = time.time_ns() // 1_000_000
        if ms == self._last_ms and self._last_random + n <= _RANDOM_MAX:
            random = self._last_random + 1
        else:
            random = int.from_bytes(os.urandom(10), "big")
            if random + n > _RANDOM_MAX:
                random = _RANDOM_MAX - n  # keep the whole run inside 80 bits
        self._last_ms = ms
        self._last_random = random + n - 1
        return encode_ulids(ms, [random + i for i in range(n)])
