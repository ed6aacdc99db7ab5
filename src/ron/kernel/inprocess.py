"""Running every service inside the kernel's process (``--single-process``, embedding).

Same services, same interfaces, no child processes: peers are the service objects
themselves. There is nothing to restart (a crash here is a crash of the node), so this
host only starts, probes, reconfigures and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ron.kernel.bus import Bus
from ron.kernel.config import Config
from ron.kernel.events import KernelEvent
from ron.kernel.health import HealthState
from ron.kernel.metrics import Metrics
from ron.kernel.spec import ServiceSpec
from ron.services.base import Service, ServiceContext, load_target
from ron.services.peers import LocalPeers

log = logging.getLogger("ron.inprocess")


class InProcessHost:
    """The single-process counterpart of :class:`ron.kernel.supervisor.Supervisor`."""

    def __init__(
        self,
        specs: list[ServiceSpec],
        config: Config,
        *,
        bus: Bus,
        health: HealthState,
        run_dir: Path,
        listeners: Mapping[str, socket.socket],
        kernel: Any = None,
    ) -> None:
        self._specs = specs
        self.config = config
        self._bus = bus
        self._health = health
        self._run_dir = run_dir
        self._listeners = listeners
        self._kernel = kernel
        self._services: dict[str, Any] = {}
        self._metrics: dict[str, Metrics] = {}
        self._probe: asyncio.Task[None] | None = None
        for spec in specs:
            health.register(spec.name, required=spec.required)

    @property
    def services(self) -> Mapping[str, Service]:
        return self._services

    async def start(self) -> None:
        peers = LocalPeers(self._services, kernel=self._kernel)
        for spec in self._specs:  # specs come in dependency order
            service = load_target(spec.target)()
            metrics = Metrics()
            ctx = ServiceContext(
                name=spec.name,
                config=self.config,
                metrics=metrics,
                data_dir=self.config.data_dir,
                run_dir=self._run_dir,
                peers=peers,
                listeners={n: self._listeners[n] for n in spec.listeners},
                single_process=True,
            )
            await service.start(ctx)
            self._services[spec.name] = service
            self._metrics[spec.name] = metrics
        self._check()
        self._probe = asyncio.create_task(self._probe_loop())

    def _check(self) -> None:
        for name, service in self._services.items():
            ok, detail = service.health()
            self._health.set_degraded(name, service.degraded())
            if self._health.set(name, ok, detail):
                self._bus.publish(KernelEvent.Health(name, ok))

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.supervisor.health_interval_s)
            self._check()

    def status(self) -> list[dict[str, Any]]:
        out = []
        for spec in self._specs:
            h = self._health.service(spec.name)
            out.append(
                {
                    "service": spec.name,
                    "state": "running" if spec.name in self._services else "starting",
                    "pid": None,
                    "healthy": bool(h and h.ok),
                    "detail": h.detail if h else "",
                    "restarts": 0,
                    "quarantined": False,
                    "last_reason": "",
                    "required": spec.required,
                }
            )
        return out

    def names(self) -> list[str]:
        return [s.name for s in self._specs]

    async def restart(self, name: str) -> None:
        log.warning("restart is not available in single-process mode", extra={"target": name})

    async def apply_config(self, config: Config, version: int) -> None:
        self.config = config
        for service in self._services.values():
            await service.reconfigure(config)

    async def scrape(self, timeout: float = 2.0) -> list[tuple[str, str]]:
        return [(name, m.render().decode()) for name, m in self._metrics.items()]

    async def stop(self, timeout: float) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        for name in reversed(list(self._services)):
            try:
                async with asyncio.timeout(timeout):
                    await self._services[name].stop()
            except Exception:
                log.exception("service stop failed", extra={"target": name})
