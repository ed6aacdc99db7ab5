"""The retry policy, as a sans-IO state machine shared by the sync and async clients.

Each call makes one :class:`Attempts`; the client reports what happened to each attempt
(an error response or a transport failure) and gets back a decision: wait this long and
try again (:class:`Retry`), or raise this error (:class:`Fail`). The client itself only
sends, sleeps and raises, so the rules live here once and are tested without a network:

- only errors that may succeed later are retried: envelopes with ``retryable: true``
  (429, 503, 500...) and transport failures (refused, reset, timed out);
- a call whose body cannot be sent twice (a one-shot stream) is never retried, and
  neither is a call that is not idempotent (the mailbox send always carries its
  idempotency key, which makes it so);
- ``Retry-After`` is honoured: the next attempt never starts sooner than the server
  asked. Without it the wait is exponential backoff with full jitter (a uniformly random
  wait between 0 and ``min(cap, base * 2**(n-1))``, the AWS-recommended variant that
  spreads retrying clients the most);
- attempts are bounded by a count and by a total deadline: a wait that would end past
  the deadline is not started, the last error is raised at once instead.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from ron.sdk.errors import RonClientError, TransportError
from ron.sdk.wire import LocalRequestError

__all__ = ["Attempts", "Fail", "Retry", "RetryEvent", "RetryPolicy", "Step"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard a client tries before it raises.

    ``max_attempts`` counts the first try (1 disables retries); ``deadline_s`` bounds the
    whole call, waits included; ``base_s`` and ``cap_s`` shape the backoff;
    ``max_retry_after_s`` is the longest ``Retry-After`` worth waiting for (a longer one
    is raised as is, with its ``retry_after``, for the caller to schedule).
    """

    max_attempts: int = 5
    deadline_s: float = 60.0
    base_s: float = 0.1
    cap_s: float = 10.0
    max_retry_after_s: float = 30.0
    retry_transport_errors: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        for name in ("deadline_s", "base_s", "cap_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.cap_s < self.base_s:
            raise ValueError("cap_s must be >= base_s")
        if self.max_retry_after_s < 0:
            raise ValueError("max_retry_after_s must be >= 0")

    @classmethod
    def never(cls) -> RetryPolicy:
        """One attempt, no retries."""
        return cls(max_attempts=1)

    def backoff_ceiling(self, retry_number: int) -> float:
        """The largest wait before retry number ``retry_number`` (1 for the first retry)."""
        exponent = min(retry_number - 1, 62)  # 2**62 * base is past any cap
        return min(self.cap_s, math.ldexp(self.base_s, exponent))


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """Reported to ``on_retry`` before each wait: what failed, and how long we wait."""

    corr_id: str
    attempt: int
    delay_s: float
    error: RonClientError


@dataclass(frozen=True, slots=True)
class Retry:
    """Wait ``delay_s`` seconds, then send the next attempt."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class Fail:
    """Stop and raise ``error``."""

    error: RonClientError


Step = Retry | Fail


class Attempts:
    """The retry state of one logical call (all its attempts share one ``corr_id``)."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        corr_id: str,
        replayable: bool = True,
        on_retry: Callable[[RetryEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self.corr_id = corr_id
        self.replayable = replayable
        self._on_retry = on_retry
        self._clock = clock
        self._rand = rand
        self.started = clock()
        self.deadline = self.started + policy.deadline_s
        self.attempt = 0
        self.retries = 0

    def begin(self) -> int:
        """Count the attempt about to be sent; returns its number (1-based)."""
        self.attempt += 1
        return self.attempt

    def remaining(self) -> float:
        """Seconds left before the call's deadline (never negative)."""
        return max(0.0, self.deadline - self._clock())

    def reset(self) -> None:
        """Start counting afresh (a long-lived subscription that connected again)."""
        self.attempt = 0
        self.retries = 0
        self.started = self._clock()
        self.deadline = self.started + self.policy.deadline_s

    def on_error(self, error: RonClientError) -> Step:
        """Decide what to do after an error response or a failed transfer."""
        if not error.retryable or not self.replayable:
            return Fail(error)
        if isinstance(error, TransportError) and not self.policy.retry_transport_errors:
            return Fail(error)
        if self.attempt >= self.policy.max_attempts:
            return Fail(error)
        if error.retry_after is not None:
            if error.retry_after > self.policy.max_retry_after_s:
                return Fail(error)
            # Never sooner than asked; a little jitter so refused clients do not return
            # in lockstep on the second boundary.
            delay = error.retry_after + self._rand() * self.policy.base_s
        else:
            delay = self._rand() * self.policy.backoff_ceiling(self.retries + 1)
        if self._clock() + delay > self.deadline:
            return Fail(error)
        self.retries += 1
        if self._on_retry is not None:
            self._on_retry(RetryEvent(self.corr_id, self.attempt, delay, error))
        return Retry(delay)

    def on_transport_error(self, exc: BaseException, *, during: str = "request") -> Step:
        """A failed transfer (no complete answer) becomes a retryable TransportError."""
        return self.on_error(self.transport_error(exc, during=during))

    def transport_error(self, exc: BaseException, *, during: str = "request") -> TransportError:
        """A TransportError for ``exc``; retryable unless the request itself could never
        be sent (an illegal header, an unsupported URL scheme)."""
        detail = type(exc).__name__
        text = str(exc)
        if text:
            detail = f"{detail}: {text}"
        permanent = isinstance(
            exc, httpx.LocalProtocolError | httpx.UnsupportedProtocol | LocalRequestError
        )
        return TransportError(
            f"{during} failed: {detail}", corr_id=self.corr_id, retryable=not permanent
        )
