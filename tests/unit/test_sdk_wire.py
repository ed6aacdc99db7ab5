"""The SDK's plain connections (``wire`` for Client, ``awire`` for AsyncClient): kept
alive, never reused once the server closed them, kept across TLS 1.3 session tickets,
retried only when safe, and failing loudly when an answer is cut short.

Each test runs a real HTTP/1.1 server on a free port in a thread and counts the
connections it accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h11
import pytest

from ron.sdk import wire
from ron.sdk.awire import AsyncWirePool
from ron.services.omnigate.tls import ensure_dev_certs


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    close_after_answer = False  # as a node whose keep-alive timeout passed
    cut_answer = False  # the answer's connection dies after half the body
    drops = 0  # this many requests are read and then closed on, unanswered

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.context = context
        self.connections = 0
        self.closed = threading.Semaphore(0)  # released each time it closes after answering

    def get_request(self) -> tuple[socket.socket, object]:
        sock, addr = super().get_request()
        self.connections += 1
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_side=True)
        return sock, addr


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.do_POST()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.server.drops:
            self.server.drops -= 1
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        answer = b"got " + body + b" at " + self.path.encode()
        self.send_response(201)
        self.send_header("Content-Length", str(len(answer)))
        self.send_header("X-Twice", "a")
        self.send_header("X-Twice", "b")
        self.end_headers()
        if self.server.cut_answer:
            self.wfile.write(answer[: len(answer) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(answer)
        self.wfile.flush()
        if self.server.close_after_answer:
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            self.server.closed.release()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(server: _Server) -> Iterator[_Server]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def plain() -> Iterator[_Server]:
    yield from _serve(_Server())


def _url(server: _Server, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{server.server_address[1]}/base"


def _send(
    pool: wire.WirePool, body: bytes, method: str = "POST", headers: dict[str, str] | None = None
) -> wire.WireReply:
    return pool.request(
        method,
        "/v1/x",
        headers={"content-type": "application/octet-stream", **(headers or {})},
        content=body,
        timeout=5.0,
        params={"k": "v w"},
    )


def test_calls_share_one_kept_alive_connection(plain: _Server) -> None:
    pool = wire.WirePool(_url(plain))
    for i in range(5):
        reply = _send(pool, b"m%d" % i)
        assert reply.status_code == 201
        assert reply.content == b"got m%d at /base/v1/x?k=v+w" % i
        assert reply.headers["x-twice"] == "a, b"
    pool.close()
    assert plain.connections == 1


def test_a_connection_the_server_closed_while_idle_is_not_used_again(plain: _Server) -> None:
    plain.close_after_answer = True
    pool = wire.WirePool(_url(plain))
    for i in range(3):
        assert _send(pool, b"m%d" % i).content.startswith(b"got m%d" % i)
        assert plain.closed.acquire(timeout=5)  # closed before the next call takes it
    pool.close()
    assert plain.connections == 3


def test_a_kept_connection_closed_with_no_answer_is_retried_only_when_safe(
    plain: _Server,
) -> None:
    """The node read a call on a kept connection and closed it unanswered (its idle
    close raced the call, or it died serving it): a GET or a keyed call goes again on a
    new connection; a plain POST may have been served, so it fails and the caller's
    retry policy decides."""
    pool = wire.WirePool(_url(plain))
    assert _send(pool, b"a").status_code == 201
    plain.drops = 1
    assert _send(pool, b"", method="GET").content.startswith(b"got  at")
    plain.drops = 1
    assert _send(pool, b"k", headers={"Idempotency-Key": "k1"}).status_code == 201
    plain.drops = 1
    with pytest.raises(http.client.RemoteDisconnected):
        _send(pool, b"plain")
    assert _send(pool, b"after").status_code == 201  # on a new connection
    pool.close()
    assert plain.connections == 4


def test_an_answer_cut_short_raises_and_its_connection_is_dropped(plain: _Server) -> None:
    pool = wire.WirePool(_url(plain))
    assert _send(pool, b"first").status_code == 201
    plain.cut_answer = True
    with pytest.raises((OSError, http.client.HTTPException)):
        _send(pool, b"second")
    plain.cut_answer = False
    assert _send(pool, b"third").content.startswith(b"got third")
    pool.close()
    assert plain.connections == 2


def test_tls_connections_are_kept_across_session_tickets(tmp_path: Path) -> None:
    files = ensure_dev_certs(tmp_path / "tls")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.load_cert_chain(files.cert, files.key)
    client_ctx = ssl.create_default_context(cafile=str(files.ca))
    for server in _serve(_Server(server_ctx)):
        pool = wire.WirePool(_url(server, "https"), ssl_context=client_ctx)
        for i in range(4):
            assert _send(pool, b"t%d" % i).content.startswith(b"got t%d" % i)
        pool.close()
        assert server.connections == 1


def test_a_header_that_cannot_be_sent_is_a_local_error(plain: _Server) -> None:
    pool = wire.WirePool(_url(plain))
    with pytest.raises(wire.LocalRequestError):
        pool.request("POST", "/v1/x", headers={"x-bad": "a\r\nb"}, content=b"", timeout=5.0)
    pool.close()


def test_a_closed_pool_refuses_calls(plain: _Server) -> None:
    pool = wire.WirePool(_url(plain))
    pool.close()
    with pytest.raises(http.client.HTTPException):
        _send(pool, b"late")


def test_proxied_urls_are_left_to_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    assert wire.usable("http://127.0.0.1:8080")
    assert not wire.usable("ftp://127.0.0.1:8080")
    monkeypatch.setenv("http_proxy", "http://proxy.example:3128")
    assert not wire.usable("http://node.example:8080")
    assert wire.usable("https://node.example:8443")
    monkeypatch.setenv("no_proxy", "node.example")
    assert wire.usable("http://node.example:8080")


# --- the asyncio pool (AsyncClient's), against the same servers -----------------------


async def _asend(
    pool: AsyncWirePool,
    body: bytes,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> wire.WireReply:
    return await pool.request(
        method,
        "/v1/x",
        headers={"content-type": "application/octet-stream", **(headers or {})},
        content=body,
        timeout=5.0,
        params={"k": "v w"},
    )


async def _acquired(sem: threading.Semaphore) -> bool:
    return await asyncio.to_thread(sem.acquire, True, 5)


async def _noticed_closed(pool: AsyncWirePool) -> None:
    """Wait (bounded) until the event loop has taken in the server's close of the kept
    connection, so the next call meets a connection known to be closed."""
    deadline = asyncio.get_running_loop().time() + 5
    while any(conn.usable() for conn in pool._idle):
        assert asyncio.get_running_loop().time() < deadline, "close never noticed"
        await asyncio.sleep(0.001)


async def test_async_calls_share_one_kept_alive_connection(plain: _Server) -> None:
    pool = AsyncWirePool(_url(plain))
    for i in range(5):
        reply = await _asend(pool, b"m%d" % i)
        assert reply.status_code == 201
        assert reply.content == b"got m%d at /base/v1/x?k=v+w" % i
        assert reply.headers["x-twice"] == "a, b"
    await pool.aclose()
    assert plain.connections == 1


async def test_async_connection_closed_while_idle_is_not_used_again(plain: _Server) -> None:
    plain.close_after_answer = True
    pool = AsyncWirePool(_url(plain))
    for i in range(3):
        assert (await _asend(pool, b"m%d" % i)).content.startswith(b"got m%d" % i)
        assert await _acquired(plain.closed)
        await _noticed_closed(pool)
    await pool.aclose()
    assert plain.connections == 3


async def test_async_closed_with_no_answer_is_retried_only_when_safe(plain: _Server) -> None:
    pool = AsyncWirePool(_url(plain))
    assert (await _asend(pool, b"a")).status_code == 201
    plain.drops = 1
    assert (await _asend(pool, b"", method="GET")).content.startswith(b"got  at")
    plain.drops = 1
    assert (await _asend(pool, b"k", headers={"Idempotency-Key": "k1"})).status_code == 201
    plain.drops = 1
    with pytest.raises(ConnectionResetError):
        await _asend(pool, b"plain")
    assert (await _asend(pool, b"after")).status_code == 201
    await pool.aclose()
    assert plain.connections == 4


async def test_async_answer_cut_short_raises(plain: _Server) -> None:
    pool = AsyncWirePool(_url(plain))
    plain.cut_answer = True
    with pytest.raises((OSError, h11.RemoteProtocolError)):
        await _asend(pool, b"first")
    plain.cut_answer = False
    assert (await _asend(pool, b"second")).content.startswith(b"got second")
    await pool.aclose()


async def test_async_tls_connection_is_kept(tmp_path: Path) -> None:
    files = ensure_dev_certs(tmp_path / "tls")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.load_cert_chain(files.cert, files.key)
    client_ctx = ssl.create_default_context(cafile=str(files.ca))
    for server in _serve(_Server(server_ctx)):
        pool = AsyncWirePool(_url(server, "https"), ssl_context=client_ctx)
        for i in range(4):
            assert (await _asend(pool, b"t%d" % i)).content.startswith(b"got t%d" % i)
        await pool.aclose()
        assert server.connections == 1


async def test_async_bad_header_is_a_local_error(plain: _Server) -> None:
    pool = AsyncWirePool(_url(plain))
    with pytest.raises(wire.LocalRequestError):
        await pool.request("POST", "/v1/x", headers={"x-bad": "a\r\nb"}, content=b"", timeout=5)
    await pool.aclose()


# ---- reading an answer's head ------------------------------------------------------


def test_a_head_is_read_as_http_client_would() -> None:
    import io

    head = wire.read_head(
        io.BytesIO(
            b"Content-Type: text/plain\r\nX-Twice: a\r\nx-twice: b\r\nX-Folded: one\r\n"
            b"\t two\r\nno colon here\r\nX-Empty:\r\n\r\nbody"
        )
    )
    assert head.get("content-type") == "text/plain"
    assert head.get("X-TWICE") == "a"
    assert head.get_all("x-twice") == ["a", "b"]
    assert head.get("x-folded") == "one two"
    assert head.get("x-empty") == ""
    assert head.get("missing") is None and "missing" not in head
    assert [n for n, _ in head.items()] == [
        "Content-Type",
        "X-Twice",
        "x-twice",
        "X-Folded",
        "X-Empty",
    ]
    with pytest.raises(http.client.LineTooLong):
        wire.read_head(io.BytesIO(b"X: " + b"a" * 70000 + b"\r\n\r\n"))
    with pytest.raises(http.client.HTTPException):
        wire.read_head(io.BytesIO(b"X: a\r\n" * 101 + b"\r\n"))


@contextlib.contextmanager
def _canned(answers: list[bytes]) -> Iterator[str]:
    """A server that answers each request on one connection with the next canned bytes
    (closing after the last); yields its URL."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            for answer in answers:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                conn.sendall(answer)
            conn.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        thread.join(5)


def test_answers_of_every_framing_are_read_whole() -> None:
    """1xx answers skipped, chunked bodies, fields joined, a HEAD's length ignored, and
    an HTTP/1.0 answer with no length read to the close."""
    answers = [
        b"HTTP/1.1 100 Continue\r\nX-Skip: 1\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Twice: a\r\nX-Twice: b\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nto the end",
    ]
    with _canned(answers) as url:
        pool = wire.WirePool(url)
        try:
            first = _send(pool, b"x")
            assert (first.status_code, first.content) == (200, b"abcde")
            assert first.headers["x-twice"] == "a, b"
            assert "x-skip" not in first.headers
            head = pool.request("HEAD", "/h", headers={}, content=None, timeout=5.0)
            assert (head.status_code, head.content, head.headers["content-length"]) == (
                200,
                b"",
                "9",
            )
            last = _send(pool, b"y")
            assert (last.content, last.headers["content-type"]) == (b"to the end", "text/plain")
        finally:
            pool.close()
