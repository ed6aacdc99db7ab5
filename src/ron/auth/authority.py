"""The owner's side of capabilities: mint, rotate, revoke -- each one audited.

The CLI (offline, against a data dir) and, later, the node's admin endpoint go through
this one class, so every privileged action is recorded the same way whichever door it
came in by. Audit records carry ids (token, key, node) and caveats, never a token or a
key.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from ron.auth import audit
from ron.auth.audit import AuditLog
from ron.auth.caveats import Caveat, caveat
from ron.auth.files import AuthPaths
from ron.auth.identity import NodeIdentity
from ron.auth.keys import KeyRing, RootKey
from ron.auth.revocation import RevocationEntry, RevocationList
from ron.auth.token import Token, mint_token
from ron.auth.verifier import Verifier
from ron.proto.address import parse_address
from ron.proto.envelope import ErrorCode, RonError

__all__ = ["Authority", "token_caveats"]


def token_caveats(
    *,
    tenant: str,
    methods: Sequence[str] = (),
    path: str | None = None,
    addr: str | None = None,
    topic: str | None = None,
    aud: str | None = None,
    max_bytes: int | None = None,
    expires: int | None = None,
) -> list[Caveat]:
    """The caveats of a new token, validated, in the canonical order of the spec."""
    out = [caveat("tenant", tenant)]
    if expires is not None:
        out.append(caveat("exp", str(expires)))
    if aud is not None:
        out.append(caveat("aud", aud))
    if methods:
        out.append(caveat("methods", ",".join(m.strip().upper() for m in methods)))
    if path is not None:
        out.append(caveat("path", path))
    if addr is not None:
        out.append(caveat("addr", parse_address(addr).canonical))
    if topic is not None:
        out.append(caveat("topic", topic))
    if max_bytes is not None:
        out.append(caveat("max_bytes", str(max_bytes)))
    return out


class Authority:
    """Mints, rotates and revokes for one data dir; ``actor`` names who, in the audit log."""

    def __init__(self, data_dir: Path, *, overlap_s: float, actor: str = "node") -> None:
        self.paths = AuthPaths(data_dir)
        self.overlap_s = overlap_s
        self.keyring = KeyRing(self.paths.keyring)
        self.revocations = RevocationList(self.paths.revocations)
        self.audit = AuditLog(self.paths.audit_log, actor=actor)

    def identity(self) -> NodeIdentity:
        """This node's identity, made (and stored, 0600) on first use."""
        identity, _ = NodeIdentity.load_or_create(self.paths.node_key)
        return identity

    def verifier(self) -> Verifier:
        return Verifier(self.keyring, self.revocations, overlap_s=self.overlap_s)

    def mint(self, caveats: Iterable[Caveat], *, now: float | None = None) -> Token:
        """A new token under the current root key (made first if there is none)."""
        t = time.time() if now is None else now
        key = self._current_key(t)
        items = list(caveats)
        if not any(c.key == "tenant" for c in items):
            raise RonError(ErrorCode.BAD_REQUEST, "a token must name its tenant")
        token = mint_token(bytes(key.secret), key.key_id, items)
        self.audit.append(
            audit.MINT,
            {
                "token_id": token.token_id_hex,
                "key_id": key.key_id,
                "caveats": [str(c) for c in token.caveats],
            },
            now=t,
        )
        return token

    def rotate(self, *, now: float | None = None) -> tuple[RootKey, RootKey | None]:
        """A new current root key; the previous one verifies for the overlap, then not."""
        t = time.time() if now is None else now
        key, retired = self.keyring.rotate(t)
        self._audit_rotation(key, retired, t)
        return key, retired

    def revoke(self, token_id: str, *, now: float | None = None) -> tuple[RevocationEntry, bool]:
        """Revoke a token id (and every attenuation of it); True when newly revoked."""
        t = time.time() if now is None else now
        entry, new = self.revocations.revoke(token_id, t)
        if new:
            self.audit.append(audit.REVOKE, {"token_id": entry.token_id, "seq": entry.seq}, now=t)
        return entry, new

    def _current_key(self, t: float) -> RootKey:
        key, made = self.keyring.ensure(t)
        if made:
            self._audit_rotation(key, None, t)
        return key

    def _audit_rotation(self, key: RootKey, retired: RootKey | None, t: float) -> None:
        self.audit.append(
            audit.ROTATE,
            {
                "key_id": key.key_id,
                "retired": retired.key_id if retired else None,
                "overlap_s": self.overlap_s,
            },
            now=t,
        )
