"""Plain request/response calls on kept-alive HTTP/1.1 connections of the standard library.

Why not httpx for these: a mailbox or metadata call is small and frequent, and httpx's
request machinery (URL merging, request and response models, cookie extraction, h11's
event state machine) costs the client about as much time per call as the node takes to
answer it. :class:`WirePool` sends such calls (a body of at most :data:`MAX_BODY` bytes
or none, an answer read whole) on ``http.client`` connections, which write a request's
head and body in one ``send``.

:mod:`ron.sdk.awire` is the same for ``AsyncClient``. The clients keep httpx for
everything that streams (downloads, file and iterator uploads, subscriptions) and for
every call when they were given a custom httpx transport or the environment names a
proxy for the node (:func:`usable`), so those keep httpx's behaviour exactly.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Mapping

import httpx

__all__ = ["Endpoint", "LocalRequestError", "WirePool", "WireReply", "again", "usable"]

# Idle connections kept per pool; a client used from more threads opens more and keeps
# this many for reuse.
MAX_IDLE = 8
# Larger bodies go through httpx: http.client joins a request's head and body into one
# buffer before sending, a copy worth making only for small bodies.
MAX_BODY = 16 * 1024 * 1024
# Raised while a request is being written: the node cannot have the whole of it.
_NOT_SENT = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class LocalRequestError(ValueError):
    """The request could never be sent as given (an illegal header or target)."""


class WireReply:
    """A read answer, as the client's parsers take it (``ron.sdk.core.Reply``).

    Header names are lower case; a repeated header's values are joined with ``", "``
    (as httpx's ``Headers.get`` does).
    """

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers: Mapping[str, str] = headers
        self.content = content


def usable(base_url: str) -> bool:
    """Whether calls to ``base_url`` may go on plain connections: an http or https URL
    that no proxy setting of the environment applies to (those go through httpx, which
    honours them)."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return True
    return bool(urllib.request.proxy_bypass(parts.netloc))


class Endpoint:
    """Where a node's URL points: scheme, host, port, and the path its calls go under."""

    def __init__(self, base_url: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.authority = parts.netloc.rpartition("@")[2]  # the Host header
        self._prefix = parts.path.rstrip("/")

    def tls(self, given: ssl.SSLContext | None) -> ssl.SSLContext | None:
        """The TLS context for this node: ``given``, else httpx's defaults (the same
        trust store and ``SSL_CERT_FILE``/``SSL_CERT_DIR`` as the client's httpx calls);
        None for plain http."""
        if given is not None or not self.https:
            return given
        return httpx.create_ssl_context()

    def target(self, path: str, params: Mapping[str, str] | None) -> str:
        """The request target of ``path`` (under the URL's own path) with ``params``."""
        target = self._prefix + path
        return target + "?" + urllib.parse.urlencode(params) if params else target


class WirePool:
    """Kept-alive connections to one node; safe to share between threads (each call
    takes a connection of its own for its duration)."""

    def __init__(self, base_url: str, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._at = Endpoint(base_url)
        self._context = self._at.tls(ssl_context)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        content: bytes | None,
        timeout: float,
        params: Mapping[str, str] | None = None,
    ) -> WireReply:
        """Send one request and read its whole answer.

        Raises ``OSError`` or ``http.client.HTTPException`` when no complete answer
        came (the connection is then dropped), :class:`LocalRequestError` when the
        request could not be written at all.
        """
        target = self._at.target(path, params)
        fields = dict(headers)
        conn, reused = self._take(timeout)
        while True:
            sent = False
            try:
                try:
                    conn.request(method, target, body=content, headers=fields)
                except (ValueError, http.client.InvalidURL) as exc:
                    raise LocalRequestError(str(exc)) from None
                sent = True
                reply = conn.getresponse()
                body = reply.read()
                break
            except BaseException as exc:
                conn.close()
                if not (reused and again(exc, sent, method, fields)):
                    raise
            conn, reused = self._open(timeout), False
        names: dict[str, str] = {}
        for name, value in reply.getheaders():
            key = name.lower()
            names[key] = f"{names[key]}, {value}" if key in names else value
        if reply.will_close:
            conn.close()
        else:
            self._give(conn)
        return WireReply(reply.status, names, body)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _take(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """A connection for one call, and whether it carried calls before."""
        while True:
            with self._lock:
                if self._closed:
                    raise http.client.HTTPException("the client is closed")
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._open(timeout), False
            sock = conn.sock
            if sock is None or _stale(sock):
                conn.close()
                continue
            sock.settimeout(timeout)
            return conn, True

    def _open(self, timeout: float) -> http.client.HTTPConnection:
        at = self._at
        if at.https:
            return http.client.HTTPSConnection(
                at.host, at.port, timeout=timeout, context=self._context
            )
        return http.client.HTTPConnection(at.host, at.port, timeout=timeout)

    def _give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()


def again(exc: BaseException, sent: bool, method: str, headers: Mapping[str, str]) -> bool:
    """Whether a call that failed on a kept connection goes once more on a new one.

    Yes when the request never got through whole (the node closed the connection just
    as the call took it: nothing was served). When the node closed it with no answer at
    all after the whole request went out, it may have closed it as idle as the request
    arrived (not served) or died serving it (maybe served): only a call that is safe to
    repeat (a method without side effects, or one the node deduplicates by its key) goes
    again; the caller's retry policy decides the rest.
    """
    if not sent:
        return isinstance(exc, _NOT_SENT)
    if not isinstance(exc, ConnectionResetError):  # RemoteDisconnected is one
        return False
    return method in _SAFE_METHODS or any(k.lower() == "idempotency-key" for k in headers)


def _stale(sock: socket.socket) -> bool:
    """Whether an idle connection can no longer carry a request: the node closed it
    (its keep-alive timeout) or sent something unasked."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return False
    if isinstance(sock, ssl.SSLSocket):
        # TLS 1.3 session tickets arrive after the handshake and make the socket
        # readable with no application data: read them, and see what is left.
        sock.settimeout(0)
        try:
            sock.recv(1)
        except ssl.SSLWantReadError:
            return False
        except OSError:
            return True
    return True
