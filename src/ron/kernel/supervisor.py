"""The supervisor: runs each service as a child OS process and keeps it running.

Crash-only design: a service that dies (any exit, any signal) is restarted with
exponential backoff and jitter (``backoff_initial_s`` doubling up to ``backoff_max_s``),
because a tight restart loop would burn the CPU that healthy services need. A service
that crashes more than ``max_restarts`` times within ``restart_window_s`` is quarantined:
not restarted, reported in /readyz, /metrics and ``ron status``, until a config reload or
an explicit restart. Every crash publishes ``ServiceCrashed{service, reason}``.

Children learn nothing from the environment: the kernel hands each one its config
snapshot, its socket path, the listening sockets it serves, a notify pipe (the child
writes ``READY`` once serving) and a lifeline pipe (EOF means the kernel died).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import socket
import sys
import time
import typing
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ron.ipc import IpcClient
from ron.kernel.bus import Bus
from ron.kernel.config import Config
from ron.kernel.events import KernelEvent
from ron.kernel.health import HealthState
from ron.kernel.metrics import Metrics
from ron.kernel.spec import ServiceSpec

log = logging.getLogger("ron.supervisor")

# Consecutive failed health probes before a live but unresponsive child is killed.
UNRESPONSIVE_PROBES = 3


def describe_exit(returncode: int) -> str:
    """Human reason for a child's exit: ``exit code 3`` or ``killed by signal SIGKILL``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by signal {name}"
    return f"exit code {returncode}"


def backoff_delay(attempt: int, initial: float, cap: float, rng: random.Random) -> float:
    """Delay before restart number ``attempt`` (1-based): "equal jitter" backoff.

    Half the exponential step is fixed and half random, so restarts of services that
    crashed together spread out but never come back faster than half the step.
    """
    step: float = min(cap, initial * (2 ** max(0, attempt - 1)))
    return step / 2 + rng.uniform(0, step / 2)


@dataclass
class _Child:
    spec: ServiceSpec
    state: str = "starting"  # starting | running | backoff | quarantined | stopped
    proc: asyncio.subprocess.Process | None = None
    restarts: deque[float] = field(default_factory=deque)
    total_restarts: int = 0
    last_reason: str = ""
    started_at: float = 0.0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    client: IpcClient | None = None
    operator_restart: bool = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None


class Supervisor:
    """Starts, watches, restarts and stops the service processes of one node."""

    def __init__(
        self,
        specs: list[ServiceSpec],
        config: Config,
        *,
        bus: Bus,
        metrics: Metrics,
        health: HealthState,
        run_dir: Path,
        listeners: Mapping[str, socket.socket],
        rng: random.Random | None = None,
    ) -> None:
        self._specs = specs
        self.config = config
        self._bus = bus
        self._metrics = metrics
        self._health = health
        self._run_dir = run_dir
        self._listeners = listeners
        self._rng = rng or random.Random()
        self._children = {s.name: _Child(s) for s in specs}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._peer_clients = json.dumps({s.name: s.client for s in specs if s.client})
        self._quarantined = metrics.gauge(
            "service_quarantined", "1 while a service is quarantined.", ["service"]
        )
        self._up = metrics.gauge("service_up", "1 while a service is healthy.", ["service"])
        for spec in specs:
            health.register(spec.name, required=spec.required)
            self._quarantined.labels(spec.name).set(0)
            self._up.labels(spec.name).set(0)

    # --- public API ---------------------------------------------------------------

    async def start(self) -> None:
        for child in self._children.values():
            self._tasks.append(asyncio.create_task(self._keep_running(child), name=child.spec.name))

    def status(self) -> list[dict[str, Any]]:
        out = []
        for name, c in self._children.items():
            h = self._health.service(name)
            out.append(
                {
                    "service": name,
                    "state": c.state,
                    "pid": c.pid,
                    "healthy": bool(h and h.ok),
                    "detail": h.detail if h else "",
                    "restarts": c.total_restarts,
                    "quarantined": c.state == "quarantined",
                    "last_reason": c.last_reason,
                    "required": c.spec.required,
                }
            )
        return out

    def names(self) -> list[str]:
        return list(self._children)

    async def restart(self, name: str) -> None:
        """Operator restart: lifts quarantine, or kills the live child to restart it fresh."""
        child = self._children[name]
        if child.state == "quarantined":
            child.restarts.clear()
            child.wake.set()
        elif child.proc is not None and child.proc.returncode is None:
            child.restarts.clear()
            child.operator_restart = True
            child.proc.send_signal(signal.SIGTERM)

    async def apply_config(self, config: Config, version: int) -> None:
        """Hand a new snapshot to every live child and lift quarantines."""
        self.config = config
        for child in self._children.values():
            if child.state == "quarantined":
                child.restarts.clear()
                child.wake.set()
            elif child.client is not None and child.state == "running":
                try:
                    await child.client.call(
                        "sys.config", {"config": config.to_dict(), "version": version}, timeout=5
                    )
                except Exception as exc:  # a child that cannot take it is probed and restarted
                    log.warning(
                        "config push failed", extra={"target": child.spec.name, "err": str(exc)}
                    )

    async def scrape(self, timeout: float = 2.0) -> list[tuple[str, str]]:
        """Each live child's metrics exposition text, fetched concurrently."""

        async def one(child: _Child) -> tuple[str, str] | None:
            if child.client is None or child.state != "running":
                return None
            try:
                text = await child.client.call("sys.metrics", timeout=timeout)
            except Exception:
                return None
            return (child.spec.name, str(text))

        results = await asyncio.gather(*(one(c) for c in self._children.values()))
        return [r for r in results if r is not None]

    async def stop(self, timeout: float) -> None:
        """SIGTERM every child, wait up to ``timeout``, then SIGKILL what remains."""
        self._stopping = True
        for child in self._children.values():
            child.wake.set()
            if child.proc is not None and child.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        procs = [c.proc for c in self._children.values() if c.proc is not None]
        if procs:
            _, pending = await asyncio.wait(
                [asyncio.ensure_future(p.wait()) for p in procs], timeout=timeout
            )
            for p in procs:
                if p.returncode is None:
                    log.warning("child did not stop in time; killing", extra={"pid": p.pid})
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for child in self._children.values():
            child.state = "stopped"
            if child.client is not None:
                await child.client.close()

    # --- the per-service loop -------------------------------------------------------

    async def _keep_running(self, child: _Child) -> None:
        name = child.spec.name
        while not self._stopping:
            if child.state == "quarantined":
                await child.wake.wait()
                child.wake.clear()
                if self._stopping:
                    return
                log.info("quarantine lifted", extra={"target": name})
                self._quarantined.labels(name).set(0)
            child.state = "starting"
            self._health.set(name, False, "starting")
            returncode = await self._run_once(child)
            self._set_health(child, False, "down")
            if self._stopping:
                return
            if child.operator_restart:
                child.operator_restart = False
                log.info("service restarted by operator", extra={"target": name})
                continue
            reason = describe_exit(returncode)
            child.last_reason = reason
            log.error("service crashed", extra={"target": name, "reason": reason})
            self._bus.publish(KernelEvent.ServiceCrashed(name, reason))
            self._metrics.service_restarts_total.labels(name).inc()
            self._metrics.rejected_total.labels("service_crash").inc()
            now = time.monotonic()
            window = self.config.supervisor.restart_window_s
            while child.restarts and now - child.restarts[0] > window:
                child.restarts.popleft()
            if len(child.restarts) >= self.config.supervisor.max_restarts:
                child.state = "quarantined"
                self._quarantined.labels(name).set(1)
                self._health.set(
                    name, False, f"quarantined after {len(child.restarts) + 1} crashes"
                )
                log.error("service quarantined", extra={"target": name})
                continue
            child.restarts.append(now)
            child.total_restarts += 1
            child.state = "backoff"
            delay = backoff_delay(
                len(child.restarts),
                self.config.supervisor.backoff_initial_s,
                self.config.supervisor.backoff_max_s,
                self._rng,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await child.wake.wait()
            child.wake.clear()

    async def _run_once(self, child: _Child) -> int:
        """Spawn the child, wait for READY, probe it until it exits; return its exit code."""
        spec = child.spec
        sock = self._run_dir / f"{spec.name}.sock"
        notify_r, notify_w = os.pipe()
        life_r, life_w = os.pipe()
        listen_args: list[str] = []
        fds = [notify_w, life_r]
        for lname in spec.listeners:
            fd = self._listeners[lname].fileno()
            fds.append(fd)
            listen_args += ["--listen", f"{lname}={fd}"]
        env = dict(os.environ)
        env["RON_SERVICE_CONFIG"] = json.dumps(self.config.to_dict())
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ron.services.runner",
                "--name",
                spec.name,
                "--target",
                spec.target,
                "--sock",
                str(sock),
                "--notify-fd",
                str(notify_w),
                "--lifeline-fd",
                str(life_r),
                "--peers",
                self._peer_clients,
                *listen_args,
                pass_fds=fds,
                env=env,
                start_new_session=True,
            )
        finally:
            os.close(notify_w)
            os.close(life_r)
        child.proc = proc
        child.started_at = time.monotonic()
        try:
            ready = await self._await_ready(notify_r, proc)
            if ready and proc.returncode is None:
                child.state = "running"
                if child.client is None:
                    child.client = IpcClient(str(sock), pool_size=4)
                self._set_health(child, True, "ok")
                probe = asyncio.create_task(self._probe(child))
                try:
                    return await proc.wait()
                finally:
                    probe.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await probe
            if proc.returncode is None:
                log.error(
                    "service did not become ready in time; killing", extra={"target": spec.name}
                )
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            return await proc.wait()
        finally:
            os.close(life_w)  # the child sees EOF on its lifeline if it still lives

    async def _await_ready(self, notify_r: int, proc: asyncio.subprocess.Process) -> bool:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[bool] = loop.create_future()
        buf = bytearray()

        def readable() -> None:
            try:
                data = os.read(notify_r, 64)
            except OSError:
                data = b""
            buf.extend(data)
            if b"READY" in buf and not got.done():
                got.set_result(True)
            elif not data and not got.done():
                got.set_result(False)

        loop.add_reader(notify_r, readable)
        waiter: asyncio.Future[Any] = asyncio.ensure_future(proc.wait())
        try:
            done, _ = await asyncio.wait(
                [typing.cast("asyncio.Future[Any]", got), waiter],
                timeout=self.config.supervisor.start_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            return got in done and got.result()
        finally:
            loop.remove_reader(notify_r)
            os.close(notify_r)
            if not waiter.done():
                waiter.cancel()

    async def _probe(self, child: _Child) -> None:
        """Health-check a running child; kill it when it stops answering."""
        assert child.client is not None
        failures = 0
        interval = self.config.supervisor.health_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                reply = await child.client.call("sys.health", timeout=max(1.0, interval))
                failures = 0
                self._set_health(child, bool(reply.get("ok")), str(reply.get("detail", "")))
                degraded = reply.get("degraded")
                self._health.set_degraded(child.spec.name, str(degraded) if degraded else None)
            except Exception as exc:
                failures += 1
                self._set_health(child, False, f"not answering: {exc}")
                if failures >= UNRESPONSIVE_PROBES and child.proc is not None:
                    log.error("service unresponsive; killing", extra={"target": child.spec.name})
                    with contextlib.suppress(ProcessLookupError):
                        child.proc.kill()
                    return

    def _set_health(self, child: _Child, ok: bool, detail: str) -> None:
        name = child.spec.name
        if not ok:
            self._health.set_degraded(name, None)
        if self._health.set(name, ok, detail):
            self._bus.publish(KernelEvent.Health(name, ok))
        self._up.labels(name).set(1 if ok else 0)
