"""Root keys for the token HMAC chains: a keyring with key ids, rotation and overlap.

Exactly one key is *current* (tokens are minted under it). ``rotate`` makes a new
current key and stamps the old one ``retired``; tokens of a retired key keep verifying
until ``retired + overlap`` (``caps.rotation_overlap_s``, at most 30 days), then fail.
The overlap is applied when a token is checked, not stored at rotation, so lowering it
and reloading cuts a compromised key off at once. Keys retired more than 30 days ago
can never verify anything again and are deleted at the next rotation.

The keyring is one JSON file, mode 0600, replaced atomically; readers (every process
that verifies tokens) notice a replacement by its stat signature and re-read it, so a
rotation by the CLI takes effect in a running node without a restart.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ron.auth.files import StatSignature, locked, read_secret, stat_signature, write_secret
from ron.auth.token import KEY_ID_RE
from ron.proto.envelope import ErrorCode, RonError

__all__ = ["KEY_BYTES", "MAX_OVERLAP_S", "KeyRing", "RootKey"]

KEY_BYTES = 32
FORMAT = "ron-keyring/1"
# The longest overlap config allows (caps.rotation_overlap_s, checked in kernel.config):
# a key retired longer ago than this can never verify a token again.
MAX_OVERLAP_S = 30 * 86400


@dataclass(frozen=True, eq=False)
class RootKey:
    """One root key. ``secret`` is a bytearray so :meth:`KeyRing.wipe` can zero it."""

    key_id: str
    secret: bytearray = field(repr=False)
    created: int
    retired: int | None = None

    def usable_at(self, now: float, overlap_s: float) -> bool:
        """May tokens of this key verify at ``now``?"""
        return self.retired is None or now < self.retired + overlap_s

    def valid_until(self, overlap_s: float) -> float | None:
        """When its tokens stop verifying; None while it is the current key."""
        return None if self.retired is None else self.retired + overlap_s


class KeyRing:
    """The node's root keys, backed by ``path`` (mode 0600) or by memory when None."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._keys: tuple[RootKey, ...] = ()
        self._by_id: dict[str, RootKey] = {}
        self._sig: StatSignature | None = None
        self.refresh()

    # --- reading ------------------------------------------------------------------

    @property
    def keys(self) -> tuple[RootKey, ...]:
        return self._keys

    def get(self, key_id: str) -> RootKey | None:
        return self._by_id.get(key_id)

    def current(self) -> RootKey | None:
        for key in reversed(self._keys):
            if key.retired is None:
                return key
        return None

    def refresh(self, *, force: bool = False) -> bool:
        """Re-read the file if it changed since the last read; True when it did.

        A file that cannot be used (corrupt, loose permissions) raises RonError and is
        not retried until it changes again: the previous keys stay in force.
        """
        if self.path is None:
            return False
        sig = stat_signature(self.path)
        if sig == self._sig and not force:
            return False
        self._sig = sig
        if sig is None:
            self._set(())
            return True
        try:
            data = read_secret(self.path)
        except FileNotFoundError:
            self._set(())
            return True
        self._set(_decode(data, self.path))
        return True

    # --- changing -----------------------------------------------------------------

    def ensure(self, now: float | None = None) -> tuple[RootKey, bool]:
        """The current key, made first if there is none; True when it was just made."""
        with self._mutation():
            current = self.current()
            if current is not None:
                return current, False
            key = self._new_key(now)
            self._store((*self._keys, key))
            return key, True

    def rotate(self, now: float | None = None) -> tuple[RootKey, RootKey | None]:
        """Make a new current key; returns it and the key it retired (if any)."""
        t = int(time.time() if now is None else now)
        with self._mutation():
            old = self.current()
            kept = [
                k
                for k in self._keys
                if k.retired is None or k.retired + MAX_OVERLAP_S > t  # prune the dead
            ]
            retired = None
            if old is not None:
                retired = RootKey(old.key_id, old.secret, old.created, t)
                kept = [retired if k is old else k for k in kept]
            key = self._new_key(t)
            self._store((*kept, key))
            return key, retired

    def add(self, key: RootKey) -> None:
        """Install a given key as current (tests and test vectors); retires no key."""
        with self._mutation():
            if key.key_id in self._by_id:
                raise RonError(ErrorCode.CONFLICT, f"key id {key.key_id} exists")
            self._store((*self._keys, key))

    def wipe(self) -> None:
        """Best-effort: zero every secret held in memory and forget the keys."""
        for key in self._keys:
            key.secret[:] = bytes(len(key.secret))
        self._set(())

    # --- internals ----------------------------------------------------------------

    def _new_key(self, now: float | None) -> RootKey:
        while True:
            key_id = f"k{secrets.token_hex(4)}"
            if key_id not in self._by_id:
                break
        created = int(time.time() if now is None else now)
        return RootKey(key_id, bytearray(secrets.token_bytes(KEY_BYTES)), created)

    @contextlib.contextmanager
    def _mutation(self) -> Iterator[None]:
        """Lock the file and re-read it, so a change made elsewhere is never lost."""
        if self.path is None:
            yield
            return
        with locked(self.path):
            self.refresh(force=True)
            yield

    def _store(self, keys: tuple[RootKey, ...]) -> None:
        if self.path is not None:
            write_secret(self.path, _encode(keys))
            self._sig = stat_signature(self.path)
        self._set(keys)

    def _set(self, keys: tuple[RootKey, ...]) -> None:
        self._keys = keys
        self._by_id = {k.key_id: k for k in keys}


def _encode(keys: tuple[RootKey, ...]) -> bytes:
    doc = {
        "format": FORMAT,
        "keys": [
            {
                "id": k.key_id,
                "secret": base64.urlsafe_b64encode(bytes(k.secret)).rstrip(b"=").decode(),
                "created": k.created,
                "retired": k.retired,
            }
            for k in keys
        ],
    }
    return (json.dumps(doc, indent=1) + "\n").encode()


def _decode(data: bytes, path: Path) -> tuple[RootKey, ...]:
    def corrupt(why: str) -> RonError:
        return RonError(ErrorCode.INTERNAL, f"keyring {path} is unusable: {why}")

    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise corrupt("not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise corrupt(f"not a {FORMAT} document")
    entries = doc.get("keys")
    if not isinstance(entries, list):
        raise corrupt("no key list")
    keys: list[RootKey] = []
    for e in entries:
        if not isinstance(e, dict):
            raise corrupt("a key entry is not an object")
        key_id, secret = e.get("id"), e.get("secret")
        created, retired = _uint(e.get("created")), _uint(e.get("retired"))
        if not isinstance(key_id, str) or KEY_ID_RE.fullmatch(key_id) is None:
            raise corrupt("bad key id")
        if not isinstance(secret, str):
            raise corrupt(f"key {key_id} has no secret")
        try:
            raw = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
        except (binascii.Error, ValueError):
            raise corrupt(f"key {key_id} secret is not base64url") from None
        if len(raw) != KEY_BYTES:
            raise corrupt(f"key {key_id} secret is not {KEY_BYTES} bytes")
        if created is None or (retired is None and e.get("retired") is not None):
            raise corrupt(f"key {key_id} has bad timestamps")
        keys.append(RootKey(key_id, bytearray(raw), created, retired))
    if len({k.key_id for k in keys}) != len(keys):
        raise corrupt("duplicate key id")
    if sum(k.retired is None for k in keys) > 1:
        raise corrupt("more than one current key")
    return tuple(keys)


def _uint(value: object) -> int | None:
    """``value`` if it is a non-negative JSON integer, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None
