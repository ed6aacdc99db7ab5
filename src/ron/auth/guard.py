"""One enforcement point's view of capabilities: the gateway, omnigate and the admin API.

A :class:`Guard` answers one question per request, *who is this?*, and leaves *may they
do this?* to the caller, who alone knows the request's method, path, address or topic
(``Grant.authorize``). Keeping the two apart lets a caller authenticate before admission
(the token's tenant is the tenant charged for quota) and authorize once it has parsed
the request.

``caps.enforce`` (default on) decides what a request *without* a token gets: refused
(401) where a token is required, or served as anonymous. A token that is presented is
always verified, enforcement or not: a bad token is refused, never silently ignored, so
a client learns at once that its credentials are wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ron.auth.files import AuthPaths
from ron.auth.identity import NodeIdentity
from ron.auth.verifier import Grant, Verifier
from ron.kernel.config import CapsConfig
from ron.proto.envelope import ErrorCode, RonError

__all__ = ["REFRESH_EVERY_S", "Guard"]

REFRESH_EVERY_S = 0.1
"""A revocation or rotation made by the CLI or another process applies to every request
this long after it at the latest (CAPABILITIES.md §5)."""


class Guard:
    """Authenticates presented tokens for one service process."""

    def __init__(
        self,
        data_dir: Path,
        caps: CapsConfig,
        *,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        self.caps = caps
        self.verifier = Verifier.from_data_dir(data_dir, overlap_s=caps.rotation_overlap_s)
        self.verifier.refresh_every_s = REFRESH_EVERY_S
        self._paths = AuthPaths(data_dir)
        self._audience: str | None = None
        self._on_refusal = on_refusal or (lambda reason: None)

    @property
    def audience(self) -> str | None:
        """This node's id (read once from its key file; None before ``ron up`` made it)."""
        if self._audience is None:
            try:
                self._audience = NodeIdentity.load(self._paths.node_key).node_id
            except (FileNotFoundError, RonError):
                return None
        return self._audience

    @property
    def enforce(self) -> bool:
        return self.caps.enforce

    def reconfigure(self, caps: CapsConfig) -> None:
        self.caps = caps
        self.verifier.reconfigure(caps.rotation_overlap_s)

    def grant(self, token: str | bytes | None, *, required: bool) -> Grant | None:
        """The grant of ``token``; None for an anonymous request that may go on.

        Raises 401 for a token that does not verify, and for a missing token where one
        is ``required`` while enforcement is on.
        """
        if not token:
            if required and self.caps.enforce:
                self._on_refusal("unauthorized")
                raise RonError(ErrorCode.UNAUTHORIZED, "a capability token is required")
            return None
        try:
            return self.verifier.authenticate(token, audience=self.audience)
        except RonError:
            self._on_refusal("unauthorized")
            raise

    def remembered(self, token: str | bytes) -> Grant | None:
        """The grant of a token this process already authenticated, re-checked for what
        may have changed since (key, rotation, revocation, expiry); None for anything
        else, which :meth:`grant` then decides (and counts, when it refuses)."""
        return self.verifier.remembered(token, audience=self.audience)

    def authorize(
        self,
        grant: Grant | None,
        *,
        method: str,
        path: str | None = None,
        addr: str | None = None,
        topic: str | None = None,
        nbytes: int | None = None,
        defer_topic: bool = False,
    ) -> None:
        """``grant.authorize`` that counts a 403; an anonymous request passes (the
        caller already decided it may be anonymous)."""
        if grant is None:
            return
        try:
            grant.authorize(
                method=method,
                path=path,
                addr=addr,
                topic=topic,
                nbytes=nbytes,
                defer_topic=defer_topic,
            )
        except RonError:
            self._on_refusal("forbidden")
            raise
