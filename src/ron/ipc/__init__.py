"""ron.ipc: the transport between the kernel and service processes (and between services).

Unix domain sockets carrying length-prefixed MessagePack frames; one call at a time per
connection, pooled on the client side; a corr_id and a deadline on every call; streamed
bodies in 64 KiB chunks. The wire format is specified in docs/specs/IPC.md.
"""

from ron.ipc.client import IpcClient
from ron.ipc.framing import CHUNK_SIZE, MAX_FRAME, FrameError
from ron.ipc.server import CallContext, Handler, IpcServer, StreamReply

__all__ = [
    "CHUNK_SIZE",
    "MAX_FRAME",
    "CallContext",
    "FrameError",
    "Handler",
    "IpcClient",
    "IpcServer",
    "StreamReply",
]
