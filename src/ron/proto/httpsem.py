"""HTTP semantics the gateway needs, as pure functions over header strings (REFERENCE §3).

Range, If-None-Match, If-Range and Accept-Encoding are parsed here, away from the ASGI
code, so every edge case can be pinned by a unit or property test without a server.
All of these headers come straight from the network: each parser bounds the header's
length before looking inside it, uses ASCII-only patterns (``\\d`` would accept
Arabic-Indic digits and ``int()`` would happily convert them), and either returns a
value or raises :class:`~ron.proto.envelope.RonError` -- never another exception.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from ron.proto.envelope import ErrorCode, RonError

__all__ = [
    "MAX_ACCEPT_ENCODING_LEN",
    "MAX_ETAG_LIST_LEN",
    "MAX_RANGE_HEADER_LEN",
    "RangeNotSatisfiable",
    "choose_encoding",
    "content_range",
    "etag_matches",
    "if_range_allows",
    "parse_range",
]

MAX_RANGE_HEADER_LEN: Final = 256
"""A single ``bytes=a-b`` needs at most ~45 characters; longer is a many-range request."""
MAX_DIGITS: Final = 18
"""Positions beyond 10**18 - 1 (about 888 PiB) are refused as abusive, not overflowed."""
MAX_ETAG_LIST_LEN: Final = 8192
MAX_ACCEPT_ENCODING_LEN: Final = 1024

_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)", re.ASCII)
_QVALUE = re.compile(r"(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)", re.ASCII)
_OWS = " \t"
# Preference among equally acceptable codings, best first; see choose_encoding.
_PREFERENCE: Final = ("br", "zstd", "identity")


class RangeNotSatisfiable(RonError):
    """416: the Range header asks for bytes this representation cannot give.

    Carries the representation length so the response can say
    ``Content-Range: bytes */<length>`` as RFC 9110 §15.5.17 asks.
    """

    def __init__(self, message: str, length: int) -> None:
        super().__init__(ErrorCode.RANGE_NOT_SATISFIABLE, message)
        self.length = length

    @property
    def content_range(self) -> str:
        """The ``Content-Range`` value for the 416 response."""
        return f"bytes */{self.length}"


def content_range(start: int, end: int, length: int) -> str:
    """The ``Content-Range`` value for a 206 response (``end`` inclusive)."""
    return f"bytes {start}-{end}/{length}"


def parse_range(header: str | None, length: int) -> tuple[int, int] | None:
    """Resolve a ``Range`` header against a representation of ``length`` bytes.

    Returns the inclusive ``(start, end)`` to serve with 206, or ``None`` to serve the
    whole representation with 200: when there is no header, or it names no unit or a
    unit other than ``bytes`` (RFC 9110 §14.2: a server MUST ignore a range unit it does
    not understand). The unit is case-insensitive.

    Raises :class:`RangeNotSatisfiable` (416) for a ``bytes`` range that is malformed,
    starts at or past the end, is ``-0``, or when there is more than one range: we serve
    one range only, and a multi-range request is answered with 416 rather than silently
    with the whole file, which RFC 9110 §14.2 allows for broken or abusive range sets.
    Numbers of more than 18 digits and headers longer than 256 characters are refused
    the same way before any number is converted.
    """
    if length < 0:
        raise ValueError("representation length must be >= 0")
    if header is None:
        return None
    if not isinstance(header, str):
        raise RangeNotSatisfiable("Range header must be text", length)
    if len(header) > MAX_RANGE_HEADER_LEN:
        raise RangeNotSatisfiable("Range header too long (one range only)", length)
    unit, eq, spec = header.strip(_OWS).partition("=")
    if not eq or unit.strip(_OWS).lower() != "bytes":
        return None  # empty, or a unit we do not understand: serve the whole thing
    ranges = [part.strip(_OWS) for part in spec.split(",")]
    ranges = [part for part in ranges if part]  # RFC 9110 list syntax allows empty items
    if not ranges:
        raise RangeNotSatisfiable("Range header names no range", length)
    if len(ranges) > 1:
        raise RangeNotSatisfiable("multiple ranges are not supported", length)
    match = _RANGE_SPEC.fullmatch(ranges[0])
    if match is None:
        raise RangeNotSatisfiable(f"malformed byte range {ranges[0]!r}", length)
    first, last = match.groups()
    if len(first) > MAX_DIGITS or len(last) > MAX_DIGITS:
        raise RangeNotSatisfiable("byte range position too large", length)

    if not first:
        if not last:
            raise RangeNotSatisfiable("byte range '-' has no positions", length)
        suffix = int(last)
        if suffix == 0 or length == 0:
            raise RangeNotSatisfiable("suffix range selects no bytes", length)
        return max(0, length - suffix), length - 1

    start = int(first)
    if start >= length:
        raise RangeNotSatisfiable(f"range starts at {start}, past the end ({length})", length)
    if not last:
        return start, length - 1
    end = int(last)
    if end < start:
        raise RangeNotSatisfiable("byte range ends before it starts", length)
    return start, min(end, length - 1)


def _opaque_tag(value: str) -> str:
    """An entity tag without ``W/`` and quotes, for weak comparison."""
    tag = value.strip(_OWS)
    if tag[:2] in ("W/", "w/"):
        tag = tag[2:].lstrip(_OWS)
    if len(tag) >= 2 and tag[0] == '"' and tag[-1] == '"':
        tag = tag[1:-1]
    return tag


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` matches our ``etag`` (so the answer is 304).

    Uses the weak comparison RFC 9110 §13.1.2 prescribes for If-None-Match: ``W/`` is
    ignored on both sides. ``*`` matches (the representation exists). Tags may be quoted
    or not, because some clients and proxies strip the quotes. An absent, empty or
    overlong header matches nothing -- the safe failure is a full 200.
    """
    if not if_none_match or not isinstance(if_none_match, str):
        return False
    if len(if_none_match) > MAX_ETAG_LIST_LEN:
        return False
    ours = _opaque_tag(etag)
    if not ours:
        return False
    for item in if_none_match.split(","):
        tag = item.strip(_OWS)
        if tag == "*" or (tag and _opaque_tag(tag) == ours):
            return True
    return False


def if_range_allows(if_range: str | None, etag: str) -> bool:
    """Whether a Range request may be honoured given its ``If-Range`` header.

    True when there is no If-Range. Otherwise only an exact *strong* match counts
    (RFC 9110 §13.1.5): the header must be our quoted ETag, byte for byte; a weak tag,
    an unquoted tag or an HTTP-date (we send no Last-Modified) means "send it all", i.e.
    False, and the caller answers 200 with the full body.
    """
    if if_range is None:
        return True
    if not isinstance(if_range, str) or len(if_range) > MAX_ETAG_LIST_LEN:
        return False
    ours = etag.strip(_OWS)
    if not (ours.startswith('"') and ours.endswith('"') and len(ours) >= 2):
        ours = f'"{ours}"'
    return if_range.strip(_OWS) == ours


def _parse_accept_encoding(header: str) -> dict[str, float]:
    """Coding -> q for each well-formed item; later duplicates do not override earlier."""
    weights: dict[str, float] = {}
    for item in header.split(","):
        coding, *params = (part.strip(_OWS) for part in item.split(";"))
        if not coding:
            continue
        q = 1.0
        for param in params:
            name, eq, value = param.partition("=")
            if name.strip(_OWS).lower() != "q":
                continue
            value = value.strip(_OWS)
            if not eq or _QVALUE.fullmatch(value) is None:
                q = -1.0  # malformed weight: ignore this item entirely
                break
            q = float(value)
        if q >= 0:
            weights.setdefault(coding.lower(), q)
    return weights


def choose_encoding(accept_encoding: str | None, available: Iterable[str]) -> str:
    """Pick ``"br"``, ``"zstd"`` or ``"identity"`` for a response.

    ``available`` lists the precompressed variants the bundle has (and that verified).
    Rules (RFC 9110 §12.5.3):

    * No header, an empty one or an overlong one: identity. Without the header RFC 9110
      would allow any coding, but clients that send none (curl, scripts) rarely decode.
    * A coding's weight is its own q, else the ``*`` q, else 0 (not acceptable).
      ``q=0`` forbids. Malformed q-values make that one item ignored.
    * identity is acceptable unless ``identity;q=0`` (or ``*;q=0`` with no identity
      item) says otherwise; when not listed it ranks below every listed coding.
    * The highest weight wins. Ties go br, then zstd, then identity: brotli at quality 9
      usually produces smaller text than zstd at level 15, and every browser decodes it,
      whereas zstd support is recent; and a compressed variant beats identity at equal
      weight because it is what the client said it accepts and it saves bandwidth.
    * If nothing is acceptable (identity forbidden and no usable variant), identity is
      returned anyway: RFC 9110 lets a server send an unlisted coding rather than fail,
      and a 406 would help no client.
    """
    if not accept_encoding or not isinstance(accept_encoding, str):
        return "identity"
    if len(accept_encoding) > MAX_ACCEPT_ENCODING_LEN:
        return "identity"
    weights = _parse_accept_encoding(accept_encoding)
    if not weights:
        return "identity"
    offered = {c.lower() for c in available if isinstance(c, str)}
    star = weights.get("*")

    def weight(coding: str) -> float:
        if coding in weights:
            return weights[coding]
        if coding == "identity":
            # '*' covers identity too; unlisted and uncovered, it is acceptable but ranks
            # below every listed coding (the smallest real q-value is 0.001).
            return star if star is not None else 0.0005
        return star if star is not None else 0.0

    best, best_q = "identity", -1.0
    for coding in _PREFERENCE:
        if coding != "identity" and coding not in offered:
            continue
        q = weight(coding)
        if q > best_q and q > 0:
            best, best_q = coding, q
    return best
