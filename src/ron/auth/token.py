"""Macaroon-style capability tokens: the byte format and the HMAC-SHA256 chain.

A token is an identifier (format version, root key id, random token id), a list of
caveats, and a 32-byte tag::

    tag_0 = HMAC-SHA256(root_key, identifier)
    tag_i = HMAC-SHA256(tag_{i-1}, caveat_i)          # caveat_i = b"key=value"
    signature = tag_n

Only the root key's holder can make ``tag_0``; anyone holding a token can compute the
next link for a caveat they append (attenuation, offline), and nobody can go back a
link to drop one, because HMAC is one-way in its key. Verification recomputes the chain
from the root key and compares the result in constant time.

Why HMAC-SHA256 rather than BLAKE3's keyed mode: it is the construction of the
macaroons paper (and libmacaroons), so its security argument carries over unchanged,
and it is in every language's standard library and in browsers' WebCrypto, so any
client can attenuate a token without a native dependency. Speed does not decide it: a
token is well under 1 KiB and a chain of a few links costs microseconds either way.
(SHA-256 is still never used for addressing content.)

This module does no I/O and knows nothing of key storage; docs/specs/CAPABILITIES.md
fixes the format byte by byte, with test vectors.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from ron.auth.caveats import MAX_CAVEAT_BYTES, Caveat, caveat, decode_caveat
from ron.proto.envelope import ErrorCode, RonError

__all__ = [
    "MAX_CAVEATS",
    "MAX_TOKEN_CHARS",
    "SIG_LEN",
    "TOKEN_ID_LEN",
    "VERSION",
    "Token",
    "chain",
    "mint_token",
    "parse_token_id",
]

VERSION = 1
SIG_LEN = 32
TOKEN_ID_LEN = 16
MAX_KEY_ID = 32
MAX_CAVEATS = 32
MAX_TOKEN_CHARS = 4096

KEY_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,32}", re.ASCII)
_B64URL = re.compile(rb"[A-Za-z0-9_-]+")
_HEX32 = re.compile(r"[0-9a-f]{32}", re.ASCII)


def _unauthorized(reason: str) -> RonError:
    return RonError(ErrorCode.UNAUTHORIZED, f"invalid token: {reason}")


def chain(root_key: bytes, identifier: bytes, caveats: Iterable[bytes]) -> bytes:
    """The signature of ``identifier`` followed by ``caveats`` under ``root_key``."""
    tag = hmac.digest(root_key, identifier, "sha256")
    for raw in caveats:
        tag = hmac.digest(tag, raw, "sha256")
    return tag


def _extend(tag: bytes, caveats: Iterable[Caveat]) -> bytes:
    for c in caveats:
        tag = hmac.digest(tag, c.encode(), "sha256")
    return tag


def parse_token_id(text: str) -> bytes:
    """A token id as printed (32 lowercase hex digits) back to its 16 bytes."""
    if not isinstance(text, str) or _HEX32.fullmatch(text) is None:
        raise RonError(ErrorCode.BAD_REQUEST, "a token id is 32 lowercase hex digits")
    return bytes.fromhex(text)


@dataclass(frozen=True, slots=True)
class Token:
    """A parsed token. Its signature is a bearer secret: it is kept out of ``repr``.

    Build one with :func:`mint_token`, :meth:`parse` or :meth:`attenuate`; the
    constructor does not check the chain (only a root key can).
    """

    key_id: str
    token_id: bytes
    caveats: tuple[Caveat, ...]
    signature: bytes = field(repr=False)

    @property
    def token_id_hex(self) -> str:
        return self.token_id.hex()

    @property
    def identifier(self) -> bytes:
        kid = self.key_id.encode("ascii")
        return bytes((VERSION, len(kid))) + kid + self.token_id

    def to_bytes(self) -> bytes:
        parts = [self.identifier, bytes((len(self.caveats),))]
        for c in self.caveats:
            raw = c.encode()
            parts.append(struct.pack("<H", len(raw)))
            parts.append(raw)
        parts.append(self.signature)
        return b"".join(parts)

    def serialize(self) -> str:
        """base64url without padding, the form carried in ``Authorization: Bearer``."""
        return base64.urlsafe_b64encode(self.to_bytes()).rstrip(b"=").decode("ascii")

    def attenuate(self, *caveats: Caveat) -> Token:
        """A new token with ``caveats`` appended: no key needed, never wider than self."""
        for c in caveats:
            caveat(c.key, c.value)  # a Caveat built by hand is checked like typed text
        if len(self.caveats) + len(caveats) > MAX_CAVEATS:
            raise RonError(ErrorCode.BAD_REQUEST, f"a token holds at most {MAX_CAVEATS} caveats")
        token = Token(
            self.key_id,
            self.token_id,
            self.caveats + tuple(caveats),
            _extend(self.signature, caveats),
        )
        if len(token.serialize()) > MAX_TOKEN_CHARS:
            raise RonError(ErrorCode.BAD_REQUEST, f"token would exceed {MAX_TOKEN_CHARS} chars")
        return token

    def signed_by(self, root_key: bytes) -> bool:
        """Does the chain from ``root_key`` end in this token's signature? Constant time."""
        expected = chain(root_key, self.identifier, (c.encode() for c in self.caveats))
        return hmac.compare_digest(expected, self.signature)

    def values(self, key: str) -> list[str]:
        """Every value of caveat ``key``, in order."""
        return [c.value for c in self.caveats if c.key == key]

    @classmethod
    def parse(cls, text: str | bytes) -> Token:
        """Strictly parse a presented token; anything wrong raises RonError(UNAUTHORIZED).

        Only the canonical base64url spelling is accepted (no padding, no whitespace, no
        stray bits), so one token has exactly one serialised form.
        """
        if isinstance(text, str):
            if not text.isascii():
                raise _unauthorized("not base64url")
            raw_text = text.encode("ascii")
        elif isinstance(text, bytes | bytearray | memoryview):
            raw_text = bytes(text)
        else:
            raise _unauthorized("not a string")
        if len(raw_text) > MAX_TOKEN_CHARS:
            raise _unauthorized(f"longer than {MAX_TOKEN_CHARS} characters")
        if _B64URL.fullmatch(raw_text) is None or len(raw_text) % 4 == 1:
            raise _unauthorized("not base64url")
        try:
            data = base64.urlsafe_b64decode(raw_text + b"=" * (-len(raw_text) % 4))
        except (binascii.Error, ValueError):
            raise _unauthorized("not base64url") from None
        if base64.urlsafe_b64encode(data).rstrip(b"=") != raw_text:
            raise _unauthorized("not canonical base64url")
        return cls.from_bytes(data)

    @classmethod
    def from_bytes(cls, data: bytes) -> Token:
        """Parse the binary form (docs/specs/CAPABILITIES.md §2)."""
        if len(data) < 2 + 1 + TOKEN_ID_LEN + 1 + SIG_LEN:
            raise _unauthorized("too short")
        if data[0] != VERSION:
            raise _unauthorized(f"unknown format version {data[0]}")
        klen = data[1]
        pos = 2 + klen
        if pos + TOKEN_ID_LEN + 1 + SIG_LEN > len(data):
            raise _unauthorized("truncated")
        key_id_raw = data[2:pos]
        if not 1 <= klen <= MAX_KEY_ID or KEY_ID_RE.fullmatch(_ascii(key_id_raw)) is None:
            raise _unauthorized("bad key id")
        token_id = data[pos : pos + TOKEN_ID_LEN]
        pos += TOKEN_ID_LEN
        count = data[pos]
        pos += 1
        if count > MAX_CAVEATS:
            raise _unauthorized(f"more than {MAX_CAVEATS} caveats")
        caveats: list[Caveat] = []
        for _ in range(count):
            if pos + 2 > len(data):
                raise _unauthorized("truncated")
            (size,) = struct.unpack_from("<H", data, pos)
            pos += 2
            if not 1 <= size <= MAX_CAVEAT_BYTES or pos + size > len(data):
                raise _unauthorized("bad caveat length")
            caveats.append(decode_caveat(data[pos : pos + size]))
            pos += size
        if len(data) - pos != SIG_LEN:
            raise _unauthorized("bad length")
        return cls(key_id_raw.decode("ascii"), token_id, tuple(caveats), data[pos:])


def _ascii(raw: bytes) -> str:
    return raw.decode("ascii", "replace")


def mint_token(
    root_key: bytes,
    key_id: str,
    caveats: Iterable[Caveat],
    *,
    token_id: bytes | None = None,
) -> Token:
    """Make a token under ``root_key``; the token id is random unless given (tests)."""
    if KEY_ID_RE.fullmatch(key_id) is None:
        raise RonError(ErrorCode.BAD_REQUEST, "key id must be 1-32 of [A-Za-z0-9._-]")
    tid = secrets.token_bytes(TOKEN_ID_LEN) if token_id is None else token_id
    if len(tid) != TOKEN_ID_LEN:
        raise RonError(ErrorCode.BAD_REQUEST, f"token id must be {TOKEN_ID_LEN} bytes")
    base = Token(key_id, tid, (), b"")
    sig = hmac.digest(root_key, base.identifier, "sha256")
    return Token(key_id, tid, (), sig).attenuate(*caveats)
