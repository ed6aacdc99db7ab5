"""The gateway's workers accept through :class:`~ron.services.balance.BalancedListener`:
uvicorn's server, with the balanced listener standing in for the event loop's."""

from __future__ import annotations

import asyncio
import socket

import uvicorn

from ron.kernel.admin import EmbeddedServer
from ron.services.balance import BalancedListener, ConnectionShares


class BalancedServer(EmbeddedServer):
    """uvicorn's server accepting through :class:`BalancedListener` (one per socket)."""

    def __init__(self, config: uvicorn.Config, shares: ConnectionShares) -> None:
        super().__init__(config)
        self._shares = shares

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if not sockets:
            raise ValueError("a balanced server serves the sockets it is given")
        config = self.config

        def protocol() -> asyncio.Protocol:
            made: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )
            return made

        held = self.server_state.connections
        listeners = [BalancedListener(s, protocol, held, self._shares) for s in sockets]
        self.servers = listeners  # type: ignore[assignment]
        self.started = True
