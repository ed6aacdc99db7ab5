"""Waiting for the operator's Ctrl-C (SIGINT) or the init system's SIGTERM."""

from __future__ import annotations

import asyncio
import signal


async def wait_for_ctrl_c() -> signal.Signals:
    """Return the first SIGINT or SIGTERM received; the handlers are removed afterwards.

    Handlers are installed on the running loop, so the signal is handled between
    callbacks rather than interrupting arbitrary code, and shutdown starts cleanly.
    """
    loop = asyncio.get_running_loop()
    got: asyncio.Future[signal.Signals] = loop.create_future()
    sigs = (signal.SIGINT, signal.SIGTERM)

    def _on(sig: signal.Signals) -> None:
        if not got.done():
            got.set_result(sig)

    for sig in sigs:
        loop.add_signal_handler(sig, _on, sig)
    try:
        return await got
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)
