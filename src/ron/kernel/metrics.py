"""Metrics: one Prometheus registry per node (or per service process), never the global one.

A registry per instance lets two nodes live in one test process and keeps each
service's numbers its own. The kernel's ``/metrics`` merges its own registry with the
exposition text each service process reports over IPC, adding a ``service`` label so
the same golden metric from two services stays two series of one family.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

# ``*_created`` series double the exposition size and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Sub-millisecond cache hits up to multi-second large transfers.
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Metrics:
    """The golden metrics (REFERENCE §8) on a private registry, plus helpers to add more."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._before_render: list[Callable[[], None]] = []
        r = self.registry
        self.requests_total = Counter(
            "requests_total", "Requests handled.", ["route", "method", "status"], registry=r
        )
        self.bytes_in_total = Counter(
            "bytes_in_total", "Request body bytes received.", ["route"], registry=r
        )
        self.bytes_out_total = Counter(
            "bytes_out_total", "Response body bytes sent.", ["route"], registry=r
        )
        self.rejected_total = Counter(
            "rejected_total", "Requests or events rejected, by reason.", ["reason"], registry=r
        )
        self.request_latency_seconds = Histogram(
            "request_latency_seconds",
            "Time from request start to last byte.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge("inflight", "Requests in progress.", registry=r)
        self.quota_exhaustions_total = Counter(
            "quota_exhaustions_total", "Requests refused by a quota.", ["route"], registry=r
        )
        self.bus_overflow_dropped_total = Counter(
            "bus_overflow_dropped_total", "Bus events lost by lagging subscribers.", registry=r
        )
        self.bus_lagged_total = Counter(
            "bus_lagged_total", "Times a bus subscriber lagged behind capacity.", registry=r
        )
        self.service_restarts_total = Counter(
            "service_restarts_total",
            "Service process crashes and restarts.",
            ["service"],
            registry=r,
        )

    def counter(self, name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
        return Counter(name, doc, list(labels), registry=self.registry)

    def gauge(self, name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
        return Gauge(name, doc, list(labels), registry=self.registry)

    def histogram(
        self,
        name: str,
        doc: str,
        labels: Iterable[str] = (),
        buckets: Iterable[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        return Histogram(name, doc, list(labels), buckets=tuple(buckets), registry=self.registry)

    def before_render(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` before every exposition (to fold in values kept elsewhere)."""
        self._before_render.append(hook)

    def render(self) -> bytes:
        """Prometheus text exposition of this registry alone."""
        for hook in self._before_render:
            hook()
        return generate_latest(self.registry)


class RequestTally:
    """The per-request golden metrics (``requests_total``, ``request_latency_seconds``,
    ``bytes_out_total``, ``bytes_in_total``), tallied in plain Python and folded into
    the registry's own counters and histogram when it is rendered.

    Four locked prometheus updates per request cost a few microseconds, a visible share
    of a small GET; a dict lookup and four additions cost a tenth of that. The exposition
    is the same: every request observed before a scrape is in that scrape. One event
    loop (one thread) adds; rendering runs on that loop too.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._bounds = (*LATENCY_BUCKETS, math.inf)
        # (route, method, status class) -> [count, seconds, bytes out, bytes in, buckets]
        self._pending: dict[tuple[str, str, int], list[Any]] = {}
        # Entries handed out by adder(): kept across flushes, zeroed in place by them.
        self._pinned: dict[tuple[str, str, int], list[Any]] = {}
        # Each adder's unfolded samples (elapsed, bytes out, elapsed, ...) and its entry.
        self._samples: list[tuple[list[Any], array[float]]] = []
        metrics.before_render(self.flush)

    def add(
        self, route: str, method: str, status: int, elapsed: float, out: int, into: int
    ) -> None:
        key = (route, method, status // 100)
        entry = self._pending.get(key)
        if entry is None:
            if len(self._pending) >= 1024:  # labels come from templates; never unbounded
                self.flush()
            entry = self._pending[key] = self._entry()
        entry[0] += 1
        entry[1] += elapsed
        entry[2] += out
        entry[3] += into
        entry[4][bisect_left(self._bounds, elapsed)] += 1

    def adder(self, route: str, method: str, status: int) -> Callable[[float, int], None]:
        """``add`` for one fixed series and no bytes in, as ``(elapsed, bytes out)``: the
        key tuple and its lookup are made once here instead of on every request (the
        gateway's fast lane, where each per-request object costs more than in a loop)."""
        key = (route, method, status // 100)
        entry = self._pinned.get(key)
        if entry is None:
            entry = self._pinned[key] = self._entry()
        samples: array[float] = array("d")
        self._samples.append((entry, samples))
        push = samples.append
        bounds = self._bounds

        # Two appends to a flat array per request; the counts, sums and buckets are
        # made from them in a tight loop (every FOLD_AT requests, and before a scrape).
        # Between two requests the worker runs the kernel and the event loop, so each
        # object a request touches is likely a cache miss: four list updates and a
        # bisect measured 2.1-2.9 us on a live worker against 0.3 us in a loop.
        def add(elapsed: float, out: int) -> None:
            push(elapsed)
            push(out)
            if len(samples) >= FOLD_AT:
                _fold_samples(entry, samples, bounds)

        return add

    def _entry(self) -> list[Any]:
        return [0, 0.0, 0, 0, [0] * len(self._bounds)]

    def flush(self) -> None:
        for entry, samples in self._samples:
            if samples:
                _fold_samples(entry, samples, self._bounds)
        pending, self._pending = self._pending, {}
        for key, entry in self._pinned.items():
            if entry[0]:
                pending[key] = self._fold_into(pending.get(key), entry)
        m = self._metrics
        for (route, method, cls), (count, seconds, out, into, buckets) in pending.items():
            m.requests_total.labels(route, method, f"{cls}xx").inc(count)
            latency = m.request_latency_seconds.labels(route)
            # Histogram.observe, n observations at once (prometheus-client is pinned; a
            # unit test checks the exposition equals that of observe()).
            latency._sum.inc(seconds)
            for i, n in enumerate(buckets):
                if n:
                    latency._buckets[i].inc(n)
            if out:
                m.bytes_out_total.labels(route).inc(out)
            if into:
                m.bytes_in_total.labels(route).inc(into)

    def _fold_into(self, target: list[Any] | None, pinned: list[Any]) -> list[Any]:
        """A copy of ``pinned`` added to ``target`` (if any); ``pinned`` is zeroed in
        place, so its adder keeps counting into it from zero."""
        out = target if target is not None else self._entry()
        for i in range(4):
            out[i] += pinned[i]
        pinned[:4] = [0, 0.0, 0, 0]
        buckets = pinned[4]
        out[4] = [a + b for a, b in zip(out[4], buckets, strict=True)]
        buckets[:] = [0] * len(buckets)
        return out


FOLD_AT = 2 * 4096  # values: 4096 requests of (elapsed, bytes out)


def _fold_samples(entry: list[Any], samples: array[float], bounds: tuple[float, ...]) -> None:
    """Add buffered (elapsed, bytes out) samples into ``entry`` and empty the buffer."""
    elapsed = samples[0::2]
    buckets = entry[4]
    for seconds in elapsed:
        buckets[bisect_left(bounds, seconds)] += 1
    entry[0] += len(elapsed)
    entry[1] += sum(elapsed)
    entry[2] += int(sum(samples[1::2]))
    del samples[:]


def status_class(status: int) -> str:
    """``2xx``-style label: status classes keep ``requests_total`` low-cardinality."""
    return f"{status // 100}xx"


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merge_expositions(parts: Iterable[tuple[str, str]]) -> bytes:
    """Merge ``(service, exposition text)`` pairs into one exposition.

    Every sample gains a ``service`` label; families of the same name are merged, so
    ``requests_total`` from the gateway and from omnigate is one family. A part that
    fails to parse is skipped rather than breaking the whole scrape.
    """
    merged: dict[str, Metric] = {}
    for service, text in parts:
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError:
            continue
        for family in families:
            target = merged.get(family.name)
            if target is None:
                target = Metric(family.name, family.documentation, family.type, family.unit)
                merged[family.name] = target
            for sample in family.samples:
                labels = {"service": service, **sample.labels}
                target.add_sample(sample.name, labels, sample.value, sample.timestamp)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(merged.values())))
    return generate_latest(registry)
