"""Node: the kernel's wiring of bus, metrics, health, config, admin server and services.

``Node.run()`` is what ``ron up`` does; tests and embedders use ``async with Node(...)``.
Listening sockets are bound here, once, by the kernel: port 0 resolves to a real port
before anything is printed, and service restarts keep the same socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from ron import __version__
from ron.auth import audit
from ron.auth.audit import AuditLog
from ron.auth.files import AuthPaths
from ron.auth.owner import ensure_owner_token
from ron.ipc import CallContext, IpcServer
from ron.kernel import amnesia
from ron.kernel.admin import EmbeddedServer, build_admin_app, make_server
from ron.kernel.bus import Bus
from ron.kernel.config import Config, ConfigError, load_config, parse_hostport
from ron.kernel.events import KernelEvent
from ron.kernel.health import HealthState
from ron.kernel.inprocess import InProcessHost
from ron.kernel.link import KERNEL_SOCKET
from ron.kernel.metrics import Metrics, merge_expositions
from ron.kernel.spec import ServiceSpec
from ron.kernel.supervisor import Supervisor
from ron.localnode import NODE_FILE
from ron.proto.envelope import RonError

log = logging.getLogger("ron.kernel")

_UDS_MAX = 100  # AF_UNIX paths must stay under 108 bytes


@dataclass
class ConfigSource:
    """Where a config snapshot comes from, kept so that a reload rebuilds it the same way."""

    file: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    flags: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> Config:
        return load_config(self.file, self.env, self.flags)

    @property
    def path(self) -> Path | None:
        if self.file is not None:
            return self.file
        value = self.env.get("RON_CONFIG")
        return Path(value) if value else None


def bind_tcp(hostport: str) -> socket.socket:
    """A listening TCP socket for ``HOST:PORT`` (port 0 picks a free port)."""
    host, port = parse_hostport(hostport)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, scheme: str = "http") -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


class Node:
    """One RustyOnions node: kernel plus supervised services."""

    def __init__(
        self,
        config: Config,
        specs: list[ServiceSpec],
        *,
        source: ConfigSource | None = None,
    ) -> None:
        self.ram_dir: Path | None = None
        if config.amnesia:
            # Everything the node writes lives in RAM; children inherit TMPDIR, so even
            # their temp files do.
            self.ram_dir = amnesia.make_ram_dir()
            (self.ram_dir / "tmp").mkdir(mode=0o700)
            os.environ["TMPDIR"] = str(self.ram_dir / "tmp")
            tempfile.tempdir = None
            config = replace(config, data_dir=self.ram_dir / "data", index_db=None)
        self.config = config
        self.node_id: str | None = None
        self.config_version = 1
        self.source = source or ConfigSource()
        self.metrics = Metrics()
        self.bus = Bus(config.kernel.bus_capacity, metrics=self.metrics)
        self.health = HealthState()
        self.specs = specs
        self.listeners: dict[str, socket.socket] = {}
        self.urls: dict[str, str] = {}
        self._admin: EmbeddedServer | None = None
        self._admin_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self._kernel_ipc: IpcServer | None = None
        self._stopped = asyncio.Event()
        self._reload_failures = self.metrics.counter(
            "config_reload_failures_total", "Config reloads rejected as invalid."
        )
        self._config_version = self.metrics.gauge("config_version", "Config snapshot in force.")
        self._config_version.set(self.config_version)
        self.metrics.gauge("amnesia_mode", "1 when nothing this node keeps touches disk.").set(
            1 if config.amnesia else 0
        )
        self._audit = AuditLog(AuthPaths(config.data_dir).audit_log, actor="kernel")
        self.host: Supervisor | InProcessHost
        self.run_dir = self._choose_run_dir()

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        data_dir = self.config.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        try:
            self.node_id, minted = ensure_owner_token(
                data_dir, overlap_s=self.config.caps.rotation_overlap_s
            )
        except RonError as exc:
            raise RuntimeError(f"capability state unusable: {exc.message}") from None
        if minted:
            log.info("owner token written", extra={"path": str(AuthPaths(data_dir).owner_token)})
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in dict.fromkeys(n for s in self.specs for n in s.listeners):
            self.listeners[name] = bind_tcp(getattr(self.config, name))
        admin_sock = bind_tcp(self.config.admin)
        self.urls["admin"] = url_of(admin_sock)
        for name, sock in self.listeners.items():
            oap_scheme = "tls" if self.config.omnigate.tls else "tcp"
            self.urls[name] = url_of(sock, oap_scheme if name == "oap" else "http")
        self.health.set_config_loaded(True)
        self._kernel_ipc = IpcServer(self._kernel_handlers(), name="kernel")
        await self._kernel_ipc.start_unix(str(self.run_dir / KERNEL_SOCKET))
        if self.config.single_process:
            self.host = InProcessHost(
                self.specs,
                self.config,
                bus=self.bus,
                health=self.health,
                run_dir=self.run_dir,
                listeners=self.listeners,
                kernel=self,
            )
        else:
            self.host = Supervisor(
                self.specs,
                self.config,
                bus=self.bus,
                metrics=self.metrics,
                health=self.health,
                run_dir=self.run_dir,
                listeners=self.listeners,
            )
        self._admin = make_server(build_admin_app(self), admin_sock)
        self._admin_task = asyncio.create_task(self._admin.serve(sockets=[admin_sock]))
        await self.host.start()
        self._write_node_file()
        self._watch_task = asyncio.create_task(self._watch_config())

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until /readyz would answer 200; False at the deadline."""
        sub = self.bus.subscribe()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self.health.ready():
                    await sub.recv()
        return self.health.ready()

    async def shutdown(self) -> None:
        """Graceful stop: not ready, publish Shutdown, stop services, close admin."""
        if self._stopped.is_set():
            return
        log.info("shutting down")
        self.health.set_draining(True)
        self.bus.publish(KernelEvent.Shutdown())
        if self._watch_task is not None:
            self._watch_task.cancel()
        await self.host.stop(self.config.kernel.drain_timeout_s)
        if self._kernel_ipc is not None:
            await self._kernel_ipc.close()
        if self._admin is not None:
            self._admin.should_exit = True
        if self._admin_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._admin_task, timeout=5)
        for sock in self.listeners.values():
            sock.close()
        with contextlib.suppress(OSError):
            (self.config.data_dir / NODE_FILE).unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        if self.ram_dir is not None:
            amnesia.wipe(self.ram_dir)
        self._stopped.set()
        log.info("stopped")

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    # --- AdminBackend -------------------------------------------------------------

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        snap = self.health.snapshot()
        return bool(snap["ready"]), snap

    def _kernel_handlers(self) -> dict[str, Any]:
        async def ready(args: dict[str, Any], ctx: CallContext) -> Any:
            return self.health.snapshot()

        async def node_metrics(args: dict[str, Any], ctx: CallContext) -> Any:
            return (await self.metrics_text()).decode()

        return {"sys.ready": ready, "sys.node_metrics": node_metrics}

    async def metrics_text(self) -> bytes:
        parts = [("kernel", self.metrics.render().decode())]
        parts += await self.host.scrape()
        return merge_expositions(parts)

    def admin_routes(self) -> list[Any]:
        from ron.kernel.admin_caps import caps_routes

        return caps_routes(self.config.data_dir, lambda: self.config.caps, lambda: self.node_id)

    def status(self) -> dict[str, Any]:
        return {
            "node": {
                "pid": os.getpid(),
                "version": __version__,
                "config_version": self.config_version,
                "single_process": self.config.single_process,
                "amnesia": self.config.amnesia,
                "node_id": self.node_id,
                "data_dir": str(self.config.data_dir),
                "urls": self.urls,
                "ready": self.health.ready(),
                "missing": self.health.missing(),
            },
            "services": self.host.status(),
        }

    async def restart_service(self, name: str) -> bool:
        if name not in self.host.names():
            return False
        await self.host.restart(name)
        return True

    async def reload_config(self) -> tuple[bool, str]:
        """Build and validate a new snapshot; only a valid one replaces the old."""
        try:
            new = self.source.load()
        except ConfigError as exc:
            self._reload_failures.inc()
            log.error("config reload rejected; previous config stays", extra={"err": str(exc)})
            self._record(audit.CONFIG_RELOAD, {"ok": False, "error": str(exc)[:512]})
            return False, str(exc)
        if new.data_dir != self.config.data_dir or new.admin != self.config.admin:
            log.warning("data_dir and admin changes take effect on restart only")
        # Where the node keeps its files is fixed for its lifetime (and an amnesia
        # node's must never fall back to the configured, on-disk one).
        new = replace(
            new,
            data_dir=self.config.data_dir,
            index_db=self.config.index_db,
            amnesia=self.config.amnesia,
        )
        self.config = new
        self.config_version += 1
        self._config_version.set(self.config_version)
        self._record(audit.CONFIG_RELOAD, {"ok": True, "version": self.config_version})
        await self.host.apply_config(new, self.config_version)
        self.bus.publish(KernelEvent.ConfigUpdated(self.config_version))
        log.info("config reloaded", extra={"version": self.config_version})
        return True, f"version {self.config_version}"

    # --- internals ----------------------------------------------------------------

    def _record(self, event: str, data: dict[str, Any]) -> None:
        """An audit record; a failure to write one is logged, never fatal to the node."""
        try:
            self._audit.append(event, data)
        except (OSError, RonError) as exc:
            log.error("audit record not written", extra={"event": event, "err": str(exc)})

    def _choose_run_dir(self) -> Path:
        candidate = (self.config.data_dir / "run").absolute()
        longest = max([len(s.name) for s in self.specs] + [8])
        if len(str(candidate)) + longest + 6 < _UDS_MAX:
            return candidate
        return Path(tempfile.mkdtemp(prefix="ron-run-"))

    def _lock_data_dir(self) -> None:
        fd = os.open(self.config.data_dir / "node.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(f"another node is running on {self.config.data_dir}") from None
        self._lock_fd = fd

    def _write_node_file(self) -> None:
        info = {"pid": os.getpid(), "urls": self.urls, "run_dir": str(self.run_dir)}
        path = self.config.data_dir / NODE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, path)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        path = self.source.path
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    async def _watch_config(self) -> None:
        """Reload on SIGHUP and whenever the config file's stat changes."""
        loop = asyncio.get_running_loop()
        hup = asyncio.Event()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, hup.set)
        stamp = self._file_stamp()
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.config.kernel.reload_poll_s):
                        await hup.wait()
                new_stamp = self._file_stamp()
                if hup.is_set() or new_stamp != stamp:
                    hup.clear()
                    stamp = new_stamp
                    await self.reload_config()
        finally:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signal.SIGHUP)


async def run_node(
    config: Config,
    specs: list[ServiceSpec],
    *,
    source: ConfigSource,
    out: TextIO = sys.stdout,
) -> int:
    """``ron up``: start, print ``ready`` and the URLs, run until SIGINT/SIGTERM, drain."""
    from ron.kernel.signals import wait_for_ctrl_c

    node = Node(config, specs, source=source)
    stop_task = asyncio.create_task(wait_for_ctrl_c())
    started = time.monotonic()
    try:
        await node.start()
    except (OSError, RuntimeError) as exc:
        print(f"ron: cannot start: {exc}", file=sys.stderr)
        stop_task.cancel()
        return 1
    ready_task = asyncio.create_task(node.wait_ready(config.supervisor.start_timeout_s))
    done, _ = await asyncio.wait([stop_task, ready_task], return_when=asyncio.FIRST_COMPLETED)
    if ready_task in done:
        if ready_task.result():
            urls = " ".join(f"{k}={v}" for k, v in node.urls.items())
            print(f"ready {urls}", file=out, flush=True)
            log.info(
                "ready", extra={"urls": node.urls, "secs": round(time.monotonic() - started, 3)}
            )
        else:
            print(f"not ready: {', '.join(node.health.missing())}", file=sys.stderr, flush=True)
        await stop_task
    else:
        ready_task.cancel()
    await node.shutdown()
    return 0
