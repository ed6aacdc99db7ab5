"""KernelLink: what a service process may ask the kernel (readiness, node metrics).

The gateway serves /readyz and /metrics on its own address too; the answers are the
node's, so it asks the kernel over IPC rather than guessing from its own state.
"""

from __future__ import annotations

from typing import Any

from ron.ipc import IpcClient

KERNEL_SOCKET = "kernel.sock"


class KernelLink:
    """The kernel as seen from a service process."""

    def __init__(self, ipc: IpcClient) -> None:
        self._ipc = ipc

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        snap: dict[str, Any] = await self._ipc.call("sys.ready", timeout=2)
        return bool(snap.get("ready")), snap

    async def metrics_text(self) -> bytes:
        text = await self._ipc.call("sys.node_metrics", timeout=5)
        return str(text).encode()
