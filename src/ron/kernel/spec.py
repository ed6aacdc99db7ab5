"""ServiceSpec: what the kernel needs to know to supervise a service, and nothing more.

The kernel stays ignorant of content, mail and tokens: it only knows a service's name,
where its class lives, whether readiness depends on it, which listening sockets it
inherits, and which proxy class lets other services call it over IPC.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one service.

    ``target`` is ``module:Class`` of the Service; ``client`` is ``module:Class`` of the
    proxy other services use to reach it over IPC (constructed with an IpcClient);
    ``listeners`` names the listening sockets (config keys such as ``http``) the kernel
    binds once and hands to every incarnation of the service, so a restart keeps the
    port and queued connections wait in the backlog instead of being refused.
    """

    name: str
    target: str
    required: bool = True
    client: str | None = None
    listeners: tuple[str, ...] = ()
    depends: tuple[str, ...] = ()
