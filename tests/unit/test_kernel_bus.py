"""The bus is bounded, publish never blocks, and lag is visible."""

from __future__ import annotations

import asyncio

import pytest

from ron.kernel import Bus, KernelEvent, Metrics


def _sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


async def test_every_subscriber_sees_every_event_in_order() -> None:
    bus = Bus(8)
    a, b = bus.subscribe(), bus.subscribe()
    for v in range(5):
        bus.publish(KernelEvent.ConfigUpdated(v))
    for sub in (a, b):
        got = [await sub.recv(timeout=1) for _ in range(5)]
        assert got == [KernelEvent.ConfigUpdated(v) for v in range(5)]


async def test_lagging_subscriber_loses_oldest_events_and_publish_never_blocks() -> None:
    metrics = Metrics()
    bus = Bus(4, metrics=metrics)
    slow = bus.subscribe()
    fast = bus.subscribe()
    for v in range(10):  # publish is synchronous: it cannot block on a slow reader
        bus.publish(KernelEvent.ConfigUpdated(v))
        assert await fast.recv(timeout=1) == KernelEvent.ConfigUpdated(v)
    got = []
    while (event := slow.try_recv()) is not None:
        got.append(event)
    # The slow subscriber lost versions 0..5 and keeps the newest ones, then the
    # overflow notice the bus published when it noticed the loss.
    assert got[:4] == [KernelEvent.ConfigUpdated(v) for v in range(6, 10)]
    assert got[4] == KernelEvent.ServiceCrashed("bus-overflow", got[4].reason)  # type: ignore[attr-defined]
    assert slow.lost == 6
    assert _sample(metrics, "bus_overflow_dropped_total") == 6
    assert _sample(metrics, "bus_lagged_total") == 1


async def test_overflow_notice_is_rate_limited() -> None:
    now = [100.0]
    bus = Bus(2, overflow_notice_interval=5.0, clock=lambda: now[0])
    watcher = bus.subscribe()
    lagger = bus.subscribe()
    notices: list[KernelEvent] = []

    def drain_watcher() -> None:
        while (event := watcher.try_recv()) is not None:
            if isinstance(event, KernelEvent.ServiceCrashed):
                notices.append(event)

    def lag_once() -> None:
        for v in range(3):
            bus.publish(KernelEvent.ConfigUpdated(v))
            drain_watcher()
        while lagger.try_recv() is not None:
            drain_watcher()
        drain_watcher()

    lag_once()
    lag_once()  # within 5 s of the first notice: counted, but no second notice
    assert len(notices) == 1
    now[0] += 5.0
    lag_once()
    assert len(notices) == 2
    assert bus.lagged_total >= 3
    assert watcher.lost == 0


async def test_recv_times_out_when_nothing_is_published() -> None:
    sub = Bus().subscribe()
    with pytest.raises(TimeoutError):
        await sub.recv(timeout=0.01)


async def test_wait_for_skips_until_a_matching_event() -> None:
    bus = Bus()
    sub = bus.subscribe()

    async def publisher() -> None:
        bus.publish(KernelEvent.Health("a", True))
        await asyncio.sleep(0)
        bus.publish(KernelEvent.ServiceCrashed("b", "exit code 1"))

    task = asyncio.create_task(publisher())
    event = await sub.wait_for(lambda e: isinstance(e, KernelEvent.ServiceCrashed), timeout=1)
    await task
    assert event == KernelEvent.ServiceCrashed("b", "exit code 1")


async def test_subscriber_starts_at_the_next_event() -> None:
    bus = Bus()
    bus.publish(KernelEvent.Shutdown())
    sub = bus.subscribe()
    assert sub.try_recv() is None
    assert sub.pending() == 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Bus(0)
