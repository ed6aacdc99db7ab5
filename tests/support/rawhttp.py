"""HTTP/1.1 on a bare socket: requests exactly as given, answers exactly as sent.

Clients normalise what a hostile peer would not (dot segments, header encodings, framing);
these helpers send the bytes themselves and read the reply up to the server's close.
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from support.node import RunningNode


def hostport(url: str) -> tuple[str, int]:
    """``http://HOST:PORT`` -> (host, port)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def exchange(url: str, request: bytes, timeout: float = 10) -> bytes:
    """Send ``request`` on a new connection; everything received until the server closed
    (a reset after the answer, as when the server stops reading mid-request, ends it too)."""
    data = b""
    with socket.create_connection(hostport(url), timeout=timeout) as s:
        # A server that answered early and closed refuses the rest; read what it said.
        with contextlib.suppress(OSError):
            s.sendall(request)
        try:
            while chunk := s.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return data


def split_response(data: bytes) -> tuple[int, bytes, bytes]:
    """(status, head, body) of one raw response."""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), head, body


def raw_get(node: RunningNode, target: str) -> tuple[int, bytes, bytes]:
    """Send a request line exactly as given (clients normalise dot segments away)."""
    request = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    return split_response(exchange(node.http, request))


def read_response(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """One response read off ``sock``: its head, then ``Content-Length`` bytes of body
    (for answers on a connection the server may keep open)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a whole response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(head.split()[1]), head, body
