"""Who a request is (its tenant) and whether it may proceed (quotas, capacity).

Tenant: the tenant named by the request's verified capability token; else the tenant
whose API key it presents (``X-Api-Key``); else the anonymous tenant of its client
address. A key that matches no tenant is refused
(401) rather than treated as anonymous, so a forged key can never land a request in
another tenant's bucket, nor silently in the anonymous one.

Quotas are per tenant, two token buckets each (requests/s and bytes/s), shared by all
gateway workers (see :mod:`ron.quota.shared`). Every response of a limited route carries
the IETF ``RateLimit-Policy`` and ``RateLimit`` headers for the request bucket.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import blake3

from ron.kernel.config import GatewayConfig, QuotaConfig
from ron.proto.envelope import ErrorCode, RonError
from ron.quota.shared import SharedBuckets, Spec, Verdict

ANONYMOUS = "anon"
_STATE = b'"requests";r=%d;t=%d'


@dataclass(frozen=True)
class Tenant:
    """The tenant a request counts against, and its effective quota.

    The bucket keys and specs and the ``RateLimit-Policy`` value depend on the tenant
    alone, so they are made once here rather than on every request."""

    id: str
    rps: float
    burst: float
    bytes_per_s: float
    bytes_burst: float
    request_key: str = field(init=False, repr=False, compare=False)
    bytes_key: str = field(init=False, repr=False, compare=False)
    policy: bytes = field(init=False, repr=False, compare=False)
    request_spec: Spec = field(init=False, repr=False, compare=False)
    bytes_spec: Spec = field(init=False, repr=False, compare=False)
    lines: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        window = max(1, math.ceil(self.burst / self.rps))
        policy = f'"requests";q={math.floor(self.burst)};w={window}'.encode()
        request_key, bytes_key = f"r:{self.id}", f"b:{self.id}"
        object.__setattr__(self, "request_key", request_key)
        object.__setattr__(self, "bytes_key", bytes_key)
        object.__setattr__(self, "policy", policy)
        object.__setattr__(self, "request_spec", (request_key, self.rps, self.burst))
        object.__setattr__(self, "bytes_spec", (bytes_key, self.bytes_per_s, self.bytes_burst))
        lines = b"ratelimit-policy: " + policy.replace(b"%", b"%%") + b"\r\nratelimit: "
        object.__setattr__(self, "lines", lines + _STATE + b"\r\n")

    def ratelimit_lines(self, left: float) -> bytes:
        """What :func:`ratelimit_headers` makes of an admitted take that left ``left``
        tokens in the request bucket (at most ``burst - 1``), rendered as the raw lines
        of a response head: the fast lane appends them in one piece, one format instead
        of two header tuples joined in four parts each."""
        return self.lines % (left, math.ceil((self.burst - left) / self.rps))


class TenantResolver:
    """Maps API keys to tenants; rebuilt on every config reload."""

    def __init__(self, config: GatewayConfig) -> None:
        q = config.quota
        self._by_key: dict[bytes, Tenant] = {}
        self._named: dict[str, Tenant] = {}
        for name, t in config.tenants.items():
            tenant = Tenant(
                id=name,
                rps=t.rps or q.rps,
                burst=t.burst or q.burst,
                bytes_per_s=t.bytes_per_s or q.bytes_per_s,
                bytes_burst=t.bytes_burst or q.bytes_burst,
            )
            for key in t.api_keys:
                self._by_key[_key_digest(key)] = tenant
            self._named[name] = tenant
        self._quota: QuotaConfig = q
        self._anonymous: dict[str | None, Tenant] = {}

    def named(self, name: str) -> Tenant:
        """The tenant a verified capability names: its configured quota, else defaults.

        A capability's tenant is the owner's word (it was signed with the root key), so
        unlike an API key it needs no lookup to be believed; it only picks the quota.
        """
        tenant = self._named.get(name)
        if tenant is None:
            q = self._quota
            tenant = Tenant(name, q.rps, q.burst, q.bytes_per_s, q.bytes_burst)
            if len(self._named) >= 4096:
                self._named.clear()
            self._named[name] = tenant
        return tenant

    def resolve(self, api_key: str | None, client_host: str | None) -> Tenant:
        if api_key is None:
            tenant = self._anonymous.get(client_host)
            if tenant is None:
                q = self._quota
                anon = f"{ANONYMOUS}:{client_host or '-'}"
                tenant = Tenant(anon, q.rps, q.burst, q.bytes_per_s, q.bytes_burst)
                if len(self._anonymous) >= 4096:
                    self._anonymous.clear()
                self._anonymous[client_host] = tenant
            return tenant
        # Looked up by a BLAKE3 of the key: the comparison never touches the secret
        # itself, so its timing says nothing about how much of a guess was right.
        tenant = self._by_key.get(_key_digest(api_key))
        if tenant is None:
            raise RonError(ErrorCode.UNAUTHORIZED, "unknown API key")
        return tenant


def _key_digest(key: str) -> bytes:
    return blake3.blake3(key.encode("utf-8", "surrogateescape")).digest()


class Quotas:
    """Admission against a tenant's request and byte buckets."""

    def __init__(self, buckets: SharedBuckets, config: QuotaConfig) -> None:
        self.buckets = buckets
        self.enabled = config.enabled

    def admit(self, tenant: Tenant, now: float | None = None) -> Verdict:
        """Charge one request; raises quota_exhausted (429) with Retry-After when empty."""
        now = time.monotonic() if now is None else now
        verdict = self.buckets.take(tenant.request_key, 1.0, tenant.rps, tenant.burst, now)
        if not verdict.allowed:
            raise QuotaExhausted(tenant, verdict, "request rate")
        return verdict

    def charge_bytes(self, tenant: Tenant, nbytes: int, now: float | None = None) -> None:
        """Charge bytes to the byte bucket (debt allowed); refuse when already in debt."""
        now = time.monotonic() if now is None else now
        verdict = self.buckets.take(
            tenant.bytes_key, float(nbytes), tenant.bytes_per_s, tenant.bytes_burst, now
        )
        if not verdict.allowed:
            raise QuotaExhausted(tenant, verdict, "bandwidth")


class QuotaExhausted(RonError):
    """429 with the bucket's own Retry-After (whole seconds, at least 1)."""

    def __init__(self, tenant: Tenant, verdict: Verdict, what: str) -> None:
        super().__init__(
            ErrorCode.QUOTA_EXHAUSTED,
            f"{what} quota exhausted for this tenant",
            retry_after=max(1, math.ceil(verdict.retry_after)),
        )
        self.verdict = verdict
        self.tenant = tenant


def ratelimit_headers(tenant: Tenant, verdict: Verdict) -> list[tuple[bytes, bytes]]:
    """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers)."""
    return [(b"ratelimit-policy", tenant.policy), (b"ratelimit", ratelimit_value(verdict))]


def ratelimit_value(verdict: Verdict) -> bytes:
    """The ``RateLimit`` header's value for the request bucket after ``verdict``."""
    return _STATE % (verdict.remaining, max(0, math.ceil(verdict.reset)))


def ratelimit_lines(tenant: Tenant, verdict: Verdict) -> bytes:
    """:func:`ratelimit_headers` as raw head lines (see :meth:`Tenant.ratelimit_lines`)."""
    return tenant.lines % (verdict.remaining, max(0, math.ceil(verdict.reset)))
