"""The owner token: what lets ``make run`` then ``ron put FILE`` work with no extra step.

On every start the kernel makes sure the node has an identity and that
``<data_dir>/auth/owner.token`` (mode 0600) holds a token that verifies on this node:
tenant ``owner``, audience this node, no other caveat. It is minted on first start, and
again only when the old one stopped verifying (revoked, or its key rotated out), so an
operator who revokes the owner token gets a fresh one at the next start instead of a
locked-out node. The CLI and the SDK read it for the local node only; anyone who can
read the file is the node's owner already (they can read its keyring too).
"""

from __future__ import annotations

from pathlib import Path

from ron.auth.authority import Authority, token_caveats
from ron.auth.files import AuthPaths, read_secret, write_secret
from ron.proto.envelope import RonError

__all__ = ["OWNER_TENANT", "ensure_owner_token", "read_owner_token"]

OWNER_TENANT = "owner"


def read_owner_token(data_dir: Path) -> str | None:
    """The owner token of the node whose data dir this is, or None (absent/unreadable)."""
    try:
        return read_secret(AuthPaths(data_dir).owner_token).decode("ascii").strip() or None
    except (OSError, RonError, UnicodeDecodeError):
        return None


def ensure_owner_token(data_dir: Path, *, overlap_s: float) -> tuple[str, bool]:
    """Make sure the node has an identity and a working owner token.

    Returns (node id, True when a token was minted now).
    """
    authority = Authority(data_dir, overlap_s=overlap_s, actor="node")
    node_id = authority.identity().node_id
    current = read_owner_token(data_dir)
    if current is not None:
        try:
            authority.verifier().authenticate(current, audience=node_id)
            return node_id, False
        except RonError:
            pass  # revoked or rotated out: mint a new one below
    token = authority.mint(token_caveats(tenant=OWNER_TENANT, aud=node_id))
    write_secret(AuthPaths(data_dir).owner_token, token.serialize().encode("ascii") + b"\n")
    return node_id, True
