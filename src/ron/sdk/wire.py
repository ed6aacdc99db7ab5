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
from typing import Protocol

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


class BinaryReader(Protocol):
    def readline(self, limit: int = -1, /) -> bytes: ...


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
        conn: http.client.HTTPConnection
        if at.https:
            conn = http.client.HTTPSConnection(
                at.host, at.port, timeout=timeout, context=self._context
            )
        else:
            conn = http.client.HTTPConnection(at.host, at.port, timeout=timeout)
        conn.response_class = _Response
        return conn

    def _give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()


# Limits of a response head, as http.client's own.
MAX_HEAD_LINE = 65536
MAX_HEAD_FIELDS = 100


class _Head:
    """A response's header fields, read the way http.client's own code and
    :class:`WirePool` read them (``get``, ``get_all``, ``items``).

    Why not http.client's: it hands every head to the ``email`` package's parser,
    about 35 µs for the six fields of a mailbox answer, ten times this.
    """

    __slots__ = ("_fields", "_first")

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._fields = fields
        first: dict[str, str] = {}
        for name, value in fields:
            first.setdefault(name.lower(), value)
        self._first = first

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first field of that name (as ``email.message.Message.get``)."""
        return self._first.get(name.lower(), default)

    def get_all(self, name: str, failobj: list[str] | None = None) -> list[str] | None:
        key = name.lower()
        found = [v for n, v in self._fields if n.lower() == key]
        return found or failobj

    def items(self) -> list[tuple[str, str]]:
        return list(self._fields)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first


def read_head(fp: BinaryReader) -> _Head:
    """The header fields up to the blank line; a continuation line (obsolete folding)
    joins the field before it, a line without a colon is skipped."""
    fields: list[tuple[str, str]] = []
    for _ in range(MAX_HEAD_FIELDS + 1):
        line = fp.readline(MAX_HEAD_LINE + 1)
        if len(line) > MAX_HEAD_LINE:
            raise http.client.LineTooLong("header line")
        if line in (b"\r\n", b"\n", b""):
            return _Head(fields)
        text = line.decode("iso-8859-1")
        if text[0] in " \t":
            if fields:
                name, value = fields[-1]
                fields[-1] = (name, f"{value} {text.strip()}")
            continue
        name, colon, value = text.partition(":")
        if colon:
            fields.append((name.strip(), value.strip()))
    raise http.client.HTTPException(f"got more than {MAX_HEAD_FIELDS} headers")


class _Response(http.client.HTTPResponse):
    """``HTTPResponse`` whose head is read by :func:`read_head`; the rest of its
    ``begin`` is http.client's own rules (1xx skipped, chunked, lengths, closing)."""

    def begin(self) -> None:
        if self.headers is not None:
            return
        while True:
            version, status, reason = self._read_status()
            if status != http.client.CONTINUE:
                break
            read_head(self.fp)  # the 100 answer's fields
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        head = read_head(self.fp)
        self.headers = self.msg = head
        encoding = head.get("transfer-encoding")
        self.chunked = bool(encoding and encoding.lower() == "chunked")
        self.chunk_left = None
        self.will_close = self._check_close()
        self.length = None
        length = head.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:
                    self.length = None
        if (
            status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED)
            or 100 <= status < 200
            or self._method == "HEAD"
        ):
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True


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
