"""How a service reaches the others: in-process objects or IPC proxies, same interface."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ron.ipc import IpcClient


def _load(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


class IpcPeers:
    """Peers in other processes: ``get(name)`` returns the service's client proxy.

    Clients are made lazily and kept, so connection pools are shared by every caller in
    this process; a peer that restarts is reconnected by the pool on the next call.
    """

    def __init__(self, run_dir: Path, clients: Mapping[str, str]) -> None:
        self._run_dir = run_dir
        self._targets = {"kernel": "ron.kernel.link:KernelLink", **clients}
        self._made: dict[str, Any] = {}
        self._ipc: list[IpcClient] = []

    def get(self, name: str) -> Any:
        if name not in self._made:
            target = self._targets.get(name)
            if target is None:
                raise KeyError(f"no IPC client known for service {name!r}")
            ipc = IpcClient(str(self._run_dir / f"{name}.sock"))
            self._ipc.append(ipc)
            self._made[name] = _load(target)(ipc)
        return self._made[name]

    async def close(self) -> None:
        for ipc in self._ipc:
            await ipc.close()


class LocalPeers:
    """Peers in this process (``--single-process``): the service objects themselves."""

    def __init__(self, services: Mapping[str, Any], kernel: Any = None) -> None:
        self._services = services  # live: services started later are found too
        self._kernel = kernel

    def get(self, name: str) -> Any:
        if name == "kernel" and self._kernel is not None:
            return self._kernel
        return self._services[name]

    async def close(self) -> None:
        return None
