"""What every connection of one omnigate process shares: settings, admission, metrics.

Admission happens once per request, at its START: the global inflight cap first (503;
cheap and stateless, and a refusal there does not charge the tenant), then the
(tenant, app) token bucket (429 with ``retry_after_ms``). An admitted request holds its
inflight slot until its reply has ended, including while its request frames are still
arriving, so a client cannot park unbounded work by never sending END.

With several workers (``omnigate.workers``) the buckets and the inflight count are the
node's, shared through :class:`~ron.services.omnigate.workers.SharedGateState`.

Settings are read through :attr:`Gate.settings` on every decision, so a config reload
applies to the next request; only per-connection limits (``max_frame``, budgets) apply
from the next connection on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ron import __version__
from ron.auth.guard import Guard
from ron.auth.verifier import Grant
from ron.kernel.config import OmnigateConfig
from ron.kernel.metrics import Metrics, RequestTally
from ron.proto.envelope import ErrorCode, RonError
from ron.proto.oap import AppId, OapLimits, ServerInfo
from ron.quota.bucket import BucketTable
from ron.services.omnigate.apps import AppHandler
from ron.services.omnigate.workers import SharedGateState

SERVER_VERSION = f"ron-omnigate/{__version__}"
HANDSHAKE_GRACE_S = 0.5
"""A handshake still pending this long after its deadline has certainly failed."""
BUSY_RETRY_S = (0.1, 0.5)
"""A 503 for a full inflight cap asks the client back after this (jittered) delay."""


@dataclass(frozen=True, slots=True)
class App:
    """An application id served here: its metrics route name and its handler."""

    name: str
    handler: AppHandler
    eager: bool = False
    """Start the handler inline in the connection's callback (no task until it first
    suspends). Only for handlers that need no task context before their first real
    wait (no ``asyncio.timeout``/``current_task`` at the start), like storage GET."""
    long_lived: Callable[[bytes], bool] | None = None
    """Whether a ``REQ|START`` without END (given its payload) opens a long-lived request
    that is dispatched at once and ended by the client's END (mailbox subscribe)."""
    fast_get: Callable[[bytes, Grant], bytes | None] | None = None
    """The answer to a one-shot GET (its payload, its capability's grant) when it is
    certain and at hand, without waiting: the bytes the handler would send in one reply
    frame before its empty END, with op ``get``. None whenever the handler must decide
    (errors and refusals included); it must never raise nor count anything. Lets the
    connection answer a cached small object without a request object, task or
    coroutine (``OapServerProtocol``'s fast path)."""


def _rate(settings: OmnigateConfig, app_proto_id: int) -> float | None:
    if app_proto_id == AppId.STORAGE:
        return settings.storage_rps
    if app_proto_id == AppId.MAILBOX:
        return settings.mailbox_rps
    return None


class Gate:
    """Shared per-process state of omnigate; single-threaded (the event loop's)."""

    def __init__(
        self,
        settings: OmnigateConfig,
        metrics: Metrics,
        apps: Mapping[int, App],
        *,
        tls: bool,
        guard: Guard | None = None,
        shared: SharedGateState | None = None,
    ) -> None:
        self.metrics = metrics
        self.shared = shared  # set when this is one of several workers
        self.guard = guard
        self.apps = dict(apps)
        self.tls = tls
        self.inflight = 0
        self._buckets: BucketTable[tuple[int | str, int]] = BucketTable(settings.quota_table_size)
        self._tally = RequestTally(metrics)
        # Requests the connections' fast path answered: a plain int on the hot path,
        # folded into the counter at each scrape.
        self.fast_answers = 0
        self._fast_counted = 0
        self._fast_total = metrics.counter(
            "oap_fast_path_responses_total",
            "OAP requests answered by omnigate's fast path (cached small objects).",
        )
        metrics.before_render(self._fold_fast)
        self._rejected: dict[str, Any] = {}
        self.connections = metrics.gauge("oap_connections", "Open OAP/1 connections.")
        # Read at scrape time: no gauge update (and its lock) on the request path.
        metrics.inflight.set_function(lambda: self.inflight)
        # Connections accepted whose TLS handshake has not completed, with their accept
        # time: the loop drops failed handshakes silently, so a sweep counts them.
        self.handshaking: dict[object, float] = {}
        self.live: set[Any] = set()  # serving connections, closed on stop
        self._drained: asyncio.Event | None = None
        self.apply(settings)

    def apply(self, settings: OmnigateConfig) -> None:
        """Take a new settings snapshot (start and config reloads)."""
        self.settings = settings
        self.limits = OapLimits(
            max_frame=settings.max_frame,
            max_streams=settings.max_streams,
            max_stream_frames=settings.max_stream_frames,
            max_stream_bytes=settings.max_stream_bytes,
        )
        self.info = ServerInfo(
            server_version=SERVER_VERSION,
            max_inflight=settings.max_inflight,
            transports=("tcp+tls",) if self.tls else ("tcp",),
        )
        self._buckets.resize(settings.quota_table_size)

    # --- admission ------------------------------------------------------------------

    def authenticate(self, cap: bytes) -> Grant | None:
        """The START's capability (401 when enforced and missing, or when it is bad)."""
        if self.guard is None:
            return None
        return self.guard.grant(cap, required=True)

    def hello_info(self) -> ServerInfo:
        """What HELLO says now: the static info plus the revocation sequence, so a peer
        sees at once whether it has missed revocations (CAPABILITIES.md §7)."""
        if self.guard is None:
            return self.info
        extra = {
            "revocation_seq": self.guard.verifier.revocation_seq,
            "node_id": self.guard.audience,
        }
        return dataclasses.replace(self.info, extra=extra)

    def remembered(self, cap: bytes) -> Grant | None:
        """The grant of a capability this process already verified, if it still stands
        (see :meth:`Guard.remembered`); None for no capability, no guard, or anything
        :meth:`authenticate` must decide."""
        guard = self.guard
        if guard is None or not cap:
            return None
        return guard.remembered(cap)

    def admit(self, app: App, app_proto_id: int, tenant_id: int | str) -> RonError | None:
        """Take an inflight slot and a token, or say why not (the error to send).

        ``tenant_id`` is the verified capability's tenant when there is one, else the
        frame's numeric tenant (only on a node that does not enforce capabilities)."""
        shared = self.shared
        inflight = self.inflight if shared is None else shared.inflight()
        if inflight >= self.settings.max_inflight:
            self.reject("inflight")
            return RonError(
                ErrorCode.UNAVAILABLE,
                "server busy: too many requests in flight",
                retry_after=round(random.uniform(*BUSY_RETRY_S), 3),
            )
        wait = self._take(app_proto_id, tenant_id)
        if wait is not None:
            self.metrics.quota_exhaustions_total.labels(app.name).inc()
            return RonError(
                ErrorCode.QUOTA_EXHAUSTED,
                "tenant quota exhausted",
                retry_after=max(0.001, round(wait, 3)),
            )
        self.inflight += 1
        if shared is not None:
            shared.add_inflight(1)
        return None

    def admit_now(self, app_proto_id: int, tenant_id: int | str) -> bool:
        """Admission of a request answered before anything else runs: True when
        :meth:`admit` would admit it (the token is then taken), else False and nothing
        counted, so the ordinary path asks again and refuses with the error frame.

        Such a request never holds its inflight slot where anyone could see it, so the
        cap is checked as if it did (``>=``, as :meth:`admit` before it counts itself).
        A refused bucket take charges nothing, so asking again is harmless.
        """
        shared = self.shared
        inflight = self.inflight if shared is None else shared.inflight()
        if inflight >= self.settings.max_inflight:
            return False
        return self._take(app_proto_id, tenant_id) is None

    def _take(self, app_proto_id: int, tenant_id: int | str) -> float | None:
        """Charge one request to the (tenant, app) bucket: None when admitted (or the app
        has no rate), else seconds to wait."""
        settings = self.settings
        rate = _rate(settings, app_proto_id)
        if rate is None:
            return None
        burst = max(1.0, rate * settings.burst_factor)
        now = time.monotonic()
        if self.shared is None:
            return self._buckets.take((tenant_id, app_proto_id), rate=rate, burst=burst, now=now)
        return self.shared.take(tenant_id, app_proto_id, rate=rate, burst=burst, now=now)

    def sweep_handshakes(self, now: float) -> int:
        """Count and forget handshakes older than the handshake timeout (they failed)."""
        deadline = now - self.settings.handshake_timeout_s - HANDSHAKE_GRACE_S
        failed = [proto for proto, accepted in self.handshaking.items() if accepted < deadline]
        for proto in failed:
            del self.handshaking[proto]
            self.reject("tls_handshake")
        return len(failed)

    def release(self) -> None:
        self.inflight -= 1
        if self.shared is not None:
            self.shared.add_inflight(-1)
        if self.inflight == 0 and self._drained is not None:
            self._drained.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until no request is in flight; False at the deadline."""
        if self.inflight == 0:
            return True
        self._drained = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                await self._drained.wait()
        except TimeoutError:
            return False
        finally:
            self._drained = None
        return True

    # --- metrics --------------------------------------------------------------------

    def reject(self, reason: str) -> None:
        """Count a refusal under a reason from a fixed vocabulary (low cardinality)."""
        child = self._rejected.get(reason)
        if child is None:
            child = self._rejected[reason] = self.metrics.rejected_total.labels(reason)
        child.inc()

    def _fold_fast(self) -> None:
        new = self.fast_answers - self._fast_counted
        if new:
            self._fast_total.inc(new)
            self._fast_counted = self.fast_answers

    def record(
        self, route: str, method: str, status: int, started: float, nbytes_in: int, nbytes: int
    ) -> None:
        """One finished request in the golden metrics: tallied here, folded into the
        registry at each scrape (:class:`RequestTally`; four locked updates per request
        were a visible share of a small GET)."""
        self._tally.add(route, method, status, time.perf_counter() - started, nbytes, nbytes_in)
