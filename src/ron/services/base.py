"""What every service is: a typed async object the kernel can start, probe and stop.

A service never knows whether it runs in its own OS process (the default, for crash
isolation and to use both cores) or inside the kernel's process (``--single-process``,
tests, embedding). The :class:`ServiceContext` hides the difference: ``peers.get(name)``
returns either the peer object itself or an IPC proxy with the same interface.
"""

from __future__ import annotations

import abc
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ron.kernel.config import Config
from ron.kernel.metrics import Metrics

Handler = Callable[..., Awaitable[Any]]


class PeerResolver(Protocol):
    """Finds another service's interface by name, in-process or over IPC."""

    def get(self, name: str) -> Any: ...


@dataclass
class ServiceContext:
    """Everything a service receives from the kernel; built once per (re)start."""

    name: str
    config: Config
    metrics: Metrics
    data_dir: Path
    run_dir: Path
    peers: PeerResolver
    listeners: Mapping[str, socket.socket] = field(default_factory=dict)
    single_process: bool = False


class Service(abc.ABC):
    """Base class of every supervised service.

    ``handlers`` maps IPC method names to ``async def h(args, ctx)`` callables; it is
    what other processes may call. ``health`` must be cheap and must not block: the
    kernel calls it every health interval.
    """

    name: ClassVar[str]

    @abc.abstractmethod
    async def start(self, ctx: ServiceContext) -> None:
        """Acquire resources and begin serving; return once ready."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop intake, finish in-flight work, release resources."""

    def health(self) -> tuple[bool, str]:
        return True, "ok"

    def degraded(self) -> str | None:
        """Why the service is degraded (still serving reads, refusing writes), or None."""
        return None

    def handlers(self) -> Mapping[str, Handler]:
        return {}

    async def reconfigure(self, config: Config) -> None:
        """A new validated config snapshot is in force; apply what can change live."""
        return None


def load_target(target: str) -> type[Service]:
    """Import ``package.module:ClassName`` and check it is a Service class."""
    import importlib

    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"service target {target!r} is not module:Class")
    obj = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(obj, type) and issubclass(obj, Service)):
        raise TypeError(f"{target} is not a Service subclass")
    return obj
