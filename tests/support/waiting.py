"""Waiting on conditions with deadlines instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_until(
    condition: Callable[[], T], timeout: float = 10.0, what: str = "condition"
) -> T:
    """Poll ``condition`` until it returns a truthy value; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def wait_until_sync(
    condition: Callable[[], T], timeout: float = 10.0, what: str = "condition"
) -> T:
    """Blocking form of :func:`wait_until` for tests without an event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def let_time_pass(seconds: float) -> None:
    """Let wall-clock time pass because the behaviour under test is defined by it (a
    Retry-After, a refill). Never use this to wait for something to happen."""
    import threading

    threading.Event().wait(seconds)
