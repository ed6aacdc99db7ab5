"""Small services for exercising the supervisor with real child processes.

They are real Service subclasses run by the real runner; only their behaviour is
chosen to make a kernel mechanism observable (a crash loop, a slow stop).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from ron.services.base import Handler, Service, ServiceContext


class Steady(Service):
    """Healthy until stopped; answers ``echo`` and ``slow`` (which drains on SIGTERM)."""

    name = "steady"

    async def start(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.calls = ctx.metrics.counter("steady_calls_total", "Calls to steady.")
        self.slow_started = ctx.metrics.counter("steady_slow_started_total", "Slow calls begun.")

    async def stop(self) -> None:
        return None

    def handlers(self) -> Mapping[str, Handler]:
        async def echo(args: dict[str, Any], ctx: Any) -> Any:
            self.calls.inc()
            return {"echo": args.get("value"), "pid": os.getpid()}

        async def slow(args: dict[str, Any], ctx: Any) -> Any:
            self.slow_started.inc()
            await asyncio.sleep(float(args.get("seconds", 0.2)))
            return {"done": True}

        return {"echo": echo, "slow": slow}


class Crasher(Service):
    """Dies right after starting: the shape of a service in a crash loop."""

    name = "crasher"

    async def start(self, ctx: ServiceContext) -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon(os._exit, 3)

    async def stop(self) -> None:
        return None
