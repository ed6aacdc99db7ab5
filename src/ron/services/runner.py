"""The main of a service child process: ``python -m ron.services.runner``.

The kernel starts one of these per service. It builds the service from its
``module:Class`` target, serves the service's handlers plus the ``sys.*`` control
methods on the service's Unix socket, tells the kernel it is ready by writing one line
to the notify pipe, and exits when told (SIGTERM) or when the kernel dies (the lifeline
pipe reaches EOF), so no orphan outlives its kernel.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from ron.ipc import CallContext, IpcServer
from ron.kernel.config import Config
from ron.kernel.metrics import Metrics
from ron.logs import setup_logging
from ron.services.base import Service, ServiceContext, load_target
from ron.services.peers import IpcPeers

log = logging.getLogger("ron.runner")


def _parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ron-service")
    p.add_argument("--name", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--sock", required=True)
    p.add_argument("--notify-fd", type=int, required=True)
    p.add_argument("--lifeline-fd", type=int, required=True)
    p.add_argument("--listen", action="append", default=[], help="NAME=FD")
    p.add_argument("--peers", default="{}", help="JSON {name: client target}")
    return p.parse_args(argv)


def control_handlers(service: Service, metrics: Metrics, on_config: Any = None) -> dict[str, Any]:
    """The ``sys.*`` methods every service answers for the kernel."""

    async def sys_health(args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        ok, detail = service.health()
        return {"ok": ok, "detail": detail, "pid": os.getpid(), "degraded": service.degraded()}

    async def sys_metrics(args: dict[str, Any], ctx: CallContext) -> str:
        return metrics.render().decode()

    async def sys_config(args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        config = Config.from_dict(args["config"])
        await service.reconfigure(config)
        return {"version": args.get("version", 0)}

    return {"sys.health": sys_health, "sys.metrics": sys_metrics, "sys.config": sys_config}


async def _amain(ns: argparse.Namespace, config: Config) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    lifeline = os.fdopen(ns.lifeline_fd, "rb", buffering=0)

    def _lifeline_readable() -> None:
        if not os.read(lifeline.fileno(), 1):
            log.warning("kernel went away; stopping")
            loop.remove_reader(lifeline.fileno())
            stop.set()

    loop.add_reader(lifeline.fileno(), _lifeline_readable)

    listeners: dict[str, socket.socket] = {}
    for item in ns.listen:
        lname, _, fd = item.partition("=")
        listeners[lname] = socket.socket(fileno=int(fd))

    metrics = Metrics()
    peers = IpcPeers(Path(ns.sock).parent, json.loads(ns.peers))
    service = load_target(ns.target)()
    ctx = ServiceContext(
        name=ns.name,
        config=config,
        metrics=metrics,
        data_dir=config.data_dir,
        run_dir=Path(ns.sock).parent,
        peers=peers,
        listeners=listeners,
    )
    await service.start(ctx)
    handlers = {**service.handlers(), **control_handlers(service, metrics)}
    server = IpcServer(handlers, name=ns.name)
    await server.start_unix(ns.sock)
    os.write(ns.notify_fd, b"READY\n")
    os.close(ns.notify_fd)
    log.info("service ready", extra={"pid": os.getpid()})
    await stop.wait()
    log.info("service stopping")
    await server.close()
    await service.stop()
    await peers.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ns = _parse_args(sys.argv[1:] if argv is None else argv)
    config = Config.from_dict(json.loads(os.environ["RON_SERVICE_CONFIG"]))
    setup_logging(config.log_level, service=ns.name)
    try:
        import uvloop

        return uvloop.run(_amain(ns, config))
    except ImportError:
        return asyncio.run(_amain(ns, config))


if __name__ == "__main__":
    sys.exit(main())
