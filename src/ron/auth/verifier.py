"""Checking a presented token: who it is (401) and what it allows (403).

Two steps, so a connection that presents one token for many requests (an OAP stream,
a mailbox subscription) pays for the HMAC chain once:

* :meth:`Verifier.authenticate` -- is this a token we issued, still valid, for this
  node? Parses strictly, finds the root key by id (current, or retired but inside the
  overlap), recomputes the chain and compares in constant time, then checks the
  revocation list, ``exp``, ``aud`` and ``tenant``. Any failure is
  ``RonError(UNAUTHORIZED)``; nothing else ever escapes for any input.
* :meth:`Grant.authorize` -- does it allow *this* request? ``methods``, ``path``,
  ``addr``, ``topic`` and ``max_bytes``, all conjunctive. A failure is
  ``RonError(FORBIDDEN)``.

:meth:`Verifier.check` does both. The keyring and the revocation list are re-read when
their files change (one ``stat`` each per call), so rotation and revocation by another
process apply without a restart. The order of the checks, and which are 401 and which
403, is normative: docs/specs/CAPABILITIES.md §5.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ron.auth.caveats import Caveat, method_allowed, path_allowed, topic_allowed
from ron.auth.files import AuthPaths
from ron.auth.keys import KeyRing, RootKey
from ron.auth.revocation import (
    RevocationEntry,
    RevocationList,
    parse_since,
    revocations_reply,
)
from ron.auth.token import Token
from ron.proto.address import parse_address
from ron.proto.envelope import ErrorCode, RonError

__all__ = ["Grant", "Verifier", "bearer_token"]

log = logging.getLogger(__name__)

_CACHE_SIZE = 4096
_PER_REQUEST = frozenset({"methods", "path", "addr", "topic", "max_bytes"})


def _unauthorized(reason: str) -> RonError:
    return RonError(ErrorCode.UNAUTHORIZED, reason)


def _forbidden(reason: str) -> RonError:
    return RonError(ErrorCode.FORBIDDEN, f"token does not allow this request: {reason}")


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None."""
    if not authorization:
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return rest.strip() or None


@dataclass(frozen=True, slots=True)
class Grant:
    """What an authenticated token allows. ``tenant`` is the tenant for quotas.

    ``max_bytes`` is the smallest ``max_bytes`` caveat (None: unbounded): when the size
    of a request is not known up front (a streamed upload), the enforcer checks the
    running total against it.
    """

    tenant: str
    token_id: str
    key_id: str
    caveats: tuple[Caveat, ...]
    expires: int | None
    max_bytes: int | None

    def authorize(
        self,
        *,
        method: str,
        path: str | None = None,
        addr: str | None = None,
        topic: str | None = None,
        nbytes: int | None = None,
        defer_topic: bool = False,
    ) -> None:
        """Raise ``RonError(FORBIDDEN)`` unless every caveat allows this request.

        A caveat about something the request does not have (``topic`` on a request
        without a topic, ``addr`` on one without an address) does not allow it.
        ``defer_topic``: the request's topic is only known to the mailbox (an ack names
        receipts, not topics); the caller hands :attr:`topic_patterns` to it instead.
        """
        for c in self.caveats:
            if c.key == "methods":
                if not method_allowed(c.value, method):
                    raise _forbidden(f"method {method[:16]!r} is not allowed")
            elif c.key == "path":
                if path is None or not path_allowed(c.value, path):
                    raise _forbidden("path is outside the token's prefix")
            elif c.key == "addr":
                if addr is None or not _same_addr(c.value, addr):
                    raise _forbidden("the token is for another address")
            elif c.key == "topic":
                if defer_topic:
                    continue
                if topic is None or not topic_allowed(c.value, topic):
                    raise _forbidden("the token is for another topic")
            elif c.key == "max_bytes" and nbytes is not None and nbytes > c.int_value:
                raise _forbidden(f"the request is larger than the token's {c.value} bytes")

    @property
    def topic_patterns(self) -> tuple[str, ...] | None:
        """The token's ``topic`` caveats (all must match), or None when it has none."""
        patterns = tuple(c.value for c in self.caveats if c.key == "topic")
        return patterns or None

    def allows(
        self,
        *,
        method: str,
        path: str | None = None,
        addr: str | None = None,
        topic: str | None = None,
        nbytes: int | None = None,
    ) -> bool:
        try:
            self.authorize(method=method, path=path, addr=addr, topic=topic, nbytes=nbytes)
        except RonError:
            return False
        return True


def _same_addr(allowed: str, requested: str) -> bool:
    try:
        return parse_address(requested).canonical == allowed
    except RonError:
        return False


class Verifier:
    """Verifies tokens against a keyring and a revocation list (files or memory)."""

    def __init__(
        self,
        keyring: KeyRing,
        revocations: RevocationList,
        *,
        overlap_s: float,
        clock: Callable[[], float] = time.time,
        refresh_every_s: float = 0.0,
    ) -> None:
        self.keyring = keyring
        # How stale the keyring and revocation list may be: checking their files costs
        # two stat calls, a large share of a small request. A token under a key this
        # process has not seen yet forces a check at once.
        self.refresh_every_s = refresh_every_s
        self._next_refresh = 0.0
        self.revocations = revocations
        self.overlap_s = overlap_s
        self._clock = clock
        # Tokens whose chain already checked out, with the key object that signed them.
        # A client presents one token for many requests; this skips parsing and the
        # HMAC chain for repeats. A keyring reload makes new key objects, so entries of
        # a changed keyring stop matching; everything else (overlap, revocation, exp,
        # aud) is still checked on every call.
        self._verified: dict[str | bytes, tuple[Token, RootKey]] = {}
        # The grant each of those tokens last authenticated to, with its key and the
        # audience it was checked for: a repeat skips the caveat walk. The checks that
        # can change between two requests (keyring, overlap, revocation, exp) still run.
        self._grants: dict[str | bytes, tuple[Grant, RootKey, str | None]] = {}

    @classmethod
    def from_data_dir(cls, data_dir: Path, *, overlap_s: float) -> Verifier:
        paths = AuthPaths(data_dir)
        return cls(KeyRing(paths.keyring), RevocationList(paths.revocations), overlap_s=overlap_s)

    def reconfigure(self, overlap_s: float) -> None:
        """Apply a new ``caps.rotation_overlap_s`` (config reload)."""
        self.overlap_s = overlap_s

    # --- revocation feed (HELLO and GET /v1/caps/revocations) ------------------------

    @property
    def revocation_seq(self) -> int:
        self._refresh(force=True)
        return self.revocations.seq

    def revocations_since(self, n: int) -> list[RevocationEntry]:
        self._refresh(force=True)
        return self.revocations.entries_since(n)

    def feed(self, query: Mapping[str, str]) -> dict[str, object]:
        """The reply of ``GET /v1/caps/revocations?since=N``, wherever it is served
        (gateway and admin address); a query other than ``since`` is 400."""
        unknown = set(query) - {"since"}
        if unknown:
            raise RonError(ErrorCode.BAD_REQUEST, f"unknown parameter {sorted(unknown)[0]!r}")
        since = parse_since(query.get("since"))
        self._refresh(force=True)
        return revocations_reply(self.revocations.seq, self.revocations.entries_since(since))

    # --- checking ---------------------------------------------------------------------

    def check(
        self,
        token: str | bytes | None,
        *,
        method: str,
        path: str | None = None,
        addr: str | None = None,
        topic: str | None = None,
        audience: str | None,
        nbytes: int | None = None,
        now: float | None = None,
    ) -> Grant:
        """Authenticate ``token`` (401) and authorize the request it comes with (403)."""
        grant = self.authenticate(token, audience=audience, now=now)
        grant.authorize(method=method, path=path, addr=addr, topic=topic, nbytes=nbytes)
        return grant

    def authenticate(
        self, token: str | bytes | None, *, audience: str | None, now: float | None = None
    ) -> Grant:
        """Is ``token`` one of ours, valid at ``now``, for ``audience``? Else 401.

        ``audience`` is this node's id; tokens with an ``aud`` caveat naming another
        node are refused (None: this node has no id, so no ``aud`` can match).
        """
        if not token:
            raise _unauthorized("a capability token is required")
        if not isinstance(token, str):
            token = bytes(token)  # hashable, and a caller's buffer may change later
        t = self._clock() if now is None else now
        grant = self.remembered(token, audience=audience, now=t)
        if grant is not None:
            return grant
        parsed, key = self._signed(token)
        if not key.usable_at(t, self.overlap_s):
            raise _unauthorized("token's key was rotated out and its overlap has ended")
        if self.revocations.is_revoked(parsed.token_id_hex):
            raise _unauthorized("token has been revoked")
        tenant: str | None = None
        expires: int | None = None
        max_bytes: int | None = None
        for c in parsed.caveats:
            if c.key == "exp":
                expires = c.int_value if expires is None else min(expires, c.int_value)
            elif c.key == "aud":
                if audience is None or c.value != audience:
                    raise _unauthorized("token is for another node")
            elif c.key == "tenant":
                if tenant is not None and tenant != c.value:
                    raise _unauthorized("token names two tenants")
                tenant = c.value
            elif c.key == "max_bytes":
                max_bytes = c.int_value if max_bytes is None else min(max_bytes, c.int_value)
            elif c.key not in _PER_REQUEST:
                # A condition we cannot evaluate cannot be satisfied (macaroon rule).
                raise _unauthorized(f"token has a caveat this node does not know: {c.key}")
        if expires is not None and not t < expires:  # (a NaN clock counts as expired)
            raise _unauthorized("token has expired")
        if tenant is None:
            raise _unauthorized("token names no tenant")
        grant = Grant(
            tenant, parsed.token_id_hex, parsed.key_id, parsed.caveats, expires, max_bytes
        )
        if len(self._grants) >= _CACHE_SIZE:
            self._grants.pop(next(iter(self._grants)))  # oldest first
        self._grants[token] = (grant, key, audience)
        return grant

    def remembered(
        self, token: str | bytes, *, audience: str | None, now: float | None = None
    ) -> Grant | None:
        """The grant ``token`` authenticated to before, if it still stands; else None.

        Skips what cannot have changed since (parsing, the HMAC chain, the caveat walk)
        but checks on every call what can: the keyring and revocation list are refreshed
        as for :meth:`authenticate`, and the signing key must still be the keyring's and
        inside its overlap, the token not revoked nor expired, the audience the same.
        Never raises and counts nothing, so a fast path can ask first and leave every
        other answer (401 included) to :meth:`authenticate`.
        """
        if not self.refresh_every_s or time.monotonic() >= self._next_refresh:
            self._refresh()
        known = self._grants.get(token)
        if known is None:
            return None
        grant, key, aud = known
        t = self._clock() if now is None else now
        if (
            aud == audience
            and self.keyring.get(grant.key_id) is key
            and key.usable_at(t, self.overlap_s)
            and not self.revocations.is_revoked(grant.token_id)
            and (grant.expires is None or t < grant.expires)
        ):
            return grant
        return None

    def _signed(self, token: str | bytes) -> tuple[Token, RootKey]:
        """Parse ``token`` and check its chain against its root key (401 otherwise)."""
        if not isinstance(token, str):
            token = bytes(token)  # hashable, and a caller's buffer may change later
        cached = self._verified.get(token)
        if cached is not None and self.keyring.get(cached[0].key_id) is cached[1]:
            return cached
        parsed = Token.parse(token)
        key = self.keyring.get(parsed.key_id)
        if key is None and self.refresh_every_s:
            self._refresh(force=True)  # minted under a key rotated in since the last look
            key = self.keyring.get(parsed.key_id)
        if key is None:
            raise _unauthorized("invalid token: unknown key")
        if not parsed.signed_by(bytes(key.secret)):
            raise _unauthorized("invalid token: bad signature")
        if len(self._verified) >= _CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))  # oldest first
        self._verified[token] = (parsed, key)
        return parsed, key

    def forget(self) -> None:
        """Drop cached tokens (amnesia wipe; tests)."""
        self._verified.clear()
        self._grants.clear()

    def _refresh(self, *, force: bool = False) -> None:
        """Pick up rotations and revocations made by other processes (at most every
        ``refresh_every_s`` unless ``force``).

        A file that became unusable is logged once and the last good state kept: a
        half-understood file must not silently drop keys or revocations.
        """
        if self.refresh_every_s and not force:
            now = time.monotonic()
            if now < self._next_refresh:
                return
            self._next_refresh = now + self.refresh_every_s
        for source in (self.keyring, self.revocations):
            try:
                source.refresh()
            except RonError as exc:
                log.error("capability state not reloaded: %s", exc.message)
