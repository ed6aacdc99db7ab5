"""The synchronous client: a thin shell that sends what :mod:`ron.sdk.core` builds.

Every method is one call of the core plus the loop that sends, sleeps between retries
and raises; :class:`ron.sdk.aclient.AsyncClient` is the same loop with ``await``.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx

from ron.proto.address import Address
from ron.sdk import mailbox as mb
from ron.sdk import wire
from ron.sdk.core import (
    DEFAULT_NODE_URL,
    SUBSCRIBE_READ_TIMEOUT_S,
    Call,
    ClientConfig,
    ClientCore,
    Download,
    ObjectStat,
    PutBody,
    Reply,
    check_corr_id,
    config_from_env,
)
from ron.sdk.errors import RonClientError, TransportError, error_from_response
from ron.sdk.files import AtomicFile
from ron.sdk.retry import Attempts, Fail, RetryEvent, RetryPolicy, Step

__all__ = ["Client", "ObjectReader", "Subscription"]

T = TypeVar("T")
# What a failed send raises on either kind of connection (no complete answer).
_SEND_FAILED = (httpx.TransportError, OSError, http.client.HTTPException, wire.LocalRequestError)
PutData = bytes | bytearray | memoryview | os.PathLike[str] | Iterable[bytes]


class Client:
    """A RustyOnions node over HTTP: content and mailbox, with retries and verification.

    >>> with Client("http://127.0.0.1:8080") as ron:        # doctest: +SKIP
    ...     addr = ron.put(b"hello", tld="txt")
    ...     assert ron.get(addr) == b"hello"

    ``retry`` shapes retries (see :class:`RetryPolicy`); ``on_retry`` is called before each
    wait with a :class:`RetryEvent` (for logging or metrics); ``transport`` replaces
    httpx's network transport (for tests or custom TLS).

    Calls with a small body and answer (mailbox operations, metadata, PUTs of bytes) go
    on kept-alive standard-library connections (:mod:`ron.sdk.wire`), which cost the
    client a fraction of httpx's CPU per call; streams, and every call when a
    ``transport`` is given or a proxy is configured, go through httpx.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_NODE_URL,
        *,
        api_key: str | None = None,
        cap: str | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        transport: httpx.BaseTransport | None = None,
        config: ClientConfig | None = None,
    ) -> None:
        if config is None:
            config = ClientConfig(
                base_url=base_url,
                api_key=api_key,
                cap=cap,
                timeout_s=timeout,
                retry=retry or RetryPolicy(),
            )
        self.config = config
        self._core = ClientCore(config, on_retry)
        self._http = httpx.Client(
            base_url=config.base_url,
            timeout=config.timeout_s,
            transport=transport,
            follow_redirects=False,
        )
        self._wire = (
            wire.WirePool(config.base_url)
            if transport is None and wire.usable(config.base_url)
            else None
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> Client:
        """A client for ``RON_NODE_URL`` with ``RON_API_KEY`` / ``RON_CAP`` credentials;
        keyword arguments (``timeout``, ``retry``, ``api_key``, ``cap``, ``base_url``,
        ``on_retry``, ``transport``) win over the environment."""
        config, rest = config_from_env(env, kwargs)
        return cls(config=config, **rest)

    def close(self) -> None:
        if self._wire is not None:
            self._wire.close()
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the two loops ------------------------------------------------------------------

    def _run(self, call: Call[T]) -> T:
        attempts = self._core.attempts(call.corr_id, replayable=call.replayable)
        while True:
            attempts.begin()
            cause: BaseException | None = None
            headers = self._core.headers(call.corr_id, call.headers)
            timeout = self._core.timeout(call)
            plain, held = call.plain_body(wire.MAX_BODY)
            try:
                reply: Reply
                if self._wire is not None and plain:
                    reply = self._wire.request(
                        call.method,
                        call.path,
                        params=call.params,
                        headers=headers,
                        content=held,
                        timeout=timeout,
                    )
                else:
                    reply = self._http.request(
                        call.method,
                        call.path,
                        params=call.params or None,
                        headers=headers,
                        content=call.body.sync_content() if call.body is not None else call.content,
                        timeout=timeout,
                    )
            except _SEND_FAILED as exc:
                cause = exc
                step: Step = attempts.on_transport_error(exc)
            else:
                error = call.error_of(reply)
                if error is None:
                    return call.parse(reply)
                step = attempts.on_error(error)
            if isinstance(step, Fail):
                raise step.error from cause
            time.sleep(step.delay_s)

    def _chunks(self, dl: Download) -> Iterator[bytes]:
        """The verified bytes of a download; yields one ``b""`` once the answer's headers
        are in (so ``open`` can report the size before any byte is read)."""
        attempts = self._core.attempts(dl.corr_id)
        primed = False
        while True:
            if dl.complete() and dl.finish():
                return
            attempts.begin()
            cause: BaseException | None = None
            headers = self._core.headers(dl.corr_id, dl.request_headers())
            try:
                with self._http.stream("GET", dl.path, headers=headers) as reply:
                    if reply.status_code >= 300:
                        reply.read()
                        error = error_from_response(
                            reply.status_code, reply.headers, reply.content, corr_id=dl.corr_id
                        )
                        step: Step = attempts.on_error(dl.on_error(error))
                    else:
                        dl.on_response(reply.status_code, reply.headers)
                        if not primed:
                            primed = True
                            yield b""
                        try:
                            for chunk in reply.iter_raw():
                                out = dl.feed(chunk)
                                if out:
                                    yield out
                        except httpx.TransportError as exc:
                            cause = exc
                            dl.interrupted()
                            error = attempts.transport_error(exc, during="download")
                            step = attempts.on_error(dl.on_error(error))
                        else:
                            if dl.finish():
                                return
                            dl.interrupted()
                            step = attempts.on_error(_short(attempts))
            except httpx.TransportError as exc:
                cause = exc
                step = attempts.on_error(dl.on_error(attempts.transport_error(exc)))
            if isinstance(step, Fail):
                raise step.error from cause
            time.sleep(step.delay_s)

    # --- content ------------------------------------------------------------------------

    def put(
        self,
        data: PutData,
        *,
        tld: str | None = None,
        mime: str | None = None,
        license: str | None = None,
        parent: Address | str | None = None,
        filename: str | None = None,
        corr_id: str | None = None,
    ) -> Address:
        """Publish bytes, a file (``pathlib.Path``) or an iterator of byte chunks.

        Returns the content address the node stored, after checking it is the BLAKE3 of
        what was sent. Bytes and files are retried on retryable failures (a PUT of the
        same bytes is idempotent); an iterator is sent once.
        """
        body = PutBody(data, asynchronous=False)
        return self._run(
            self._core.put(
                body,
                tld=tld,
                mime=mime,
                license=license,
                parent=parent,
                filename=filename,
                corr_id=corr_id,
            )
        )

    def get(
        self,
        addr: Address | str,
        *,
        range: tuple[int, int | None] | None = None,
        corr_id: str | None = None,
    ) -> bytes:
        """The object's bytes, BLAKE3-verified; ``range=(start, end)`` returns
        ``get(addr)[start:end]`` (``end=None`` reads to the end) without the rest."""
        dl = self._core.download(addr, corr_id=corr_id, range=range)
        return b"".join(self._chunks(dl))

    def get_to(
        self, addr: Address | str, path: os.PathLike[str] | str, *, corr_id: str | None = None
    ) -> Path:
        """Download into ``path``; the file appears only once the bytes verified."""
        dl = self._core.download(addr, corr_id=corr_id, range=None)
        target = AtomicFile(path)
        try:
            for chunk in self._chunks(dl):
                target.write(chunk)
            target.commit()
        except BaseException:
            target.abort()
            raise
        return target.path

    def open(self, addr: Address | str, *, corr_id: str | None = None) -> ObjectReader:
        """A streaming reader: ``with client.open(addr) as r: for chunk in r: ...``.

        The last chunk is only handed out after the whole object verified, so a loop that
        runs to the end has read exactly the addressed bytes.
        """
        dl = self._core.download(addr, corr_id=corr_id, range=None)
        return ObjectReader(dl, self._chunks(dl))

    def stat(self, addr: Address | str, *, corr_id: str | None = None) -> ObjectStat:
        """Size, type, tld and manifest fields of an object (HEAD plus Manifest.toml)."""
        corr = check_corr_id(corr_id)
        head = self._core.found(self._run(self._core.head(addr, corr)), addr, corr)
        manifest = self._run(self._core.manifest(addr, corr))
        return self._core.stat_of(addr, head, manifest)

    def exists(self, addr: Address | str, *, corr_id: str | None = None) -> bool:
        """Whether the node has the object (a paid object exists too)."""
        return self._run(self._core.head(addr, check_corr_id(corr_id))) is not None

    # --- mailbox ------------------------------------------------------------------------

    def send(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview | str,
        *,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        corr_id: str | None = None,
    ) -> mb.SendResult:
        """Enqueue a message. An idempotency key is made (unless given) once for this
        send and reused by every retry, so a retried send is stored once."""
        return self._run(
            self._core.send(
                topic, payload, headers=headers, idempotency_key=idempotency_key, corr_id=corr_id
            )
        )

    def send_batch(
        self,
        topic: str,
        messages: Iterable[bytes | tuple[bytes, Mapping[str, str]]],
        *,
        corr_id: str | None = None,
    ) -> list[mb.SendResult]:
        """Enqueue up to 100 messages in one request (each with its own idempotency key)."""
        return self._run(self._core.send_batch(topic, messages, corr_id))

    def receive(
        self,
        topic: str,
        *,
        max: int = 1,
        visibility_s: float | None = None,
        wait_s: float = 0.0,
        corr_id: str | None = None,
        ack: str | mb.Message | Iterable[str | mb.Message] | None = None,
    ) -> list[mb.Message]:
        """Lease up to ``max`` messages; with ``wait_s`` long-poll until one arrives.

        ``ack``: messages (or receipts) finished since the last receive, acknowledged
        first in the same call and the same commit, as :meth:`ack` would (a stale one
        raises Conflict and nothing is leased). A consumer loop then costs one
        round trip per batch instead of two::

            got: list[Message] = []
            while True:
                got = client.receive(topic, max=10, wait_s=20, ack=got)
                handle(got)
        """
        return self._run(
            self._core.receive(
                topic, max=max, visibility_s=visibility_s, wait_s=wait_s, corr_id=corr_id, ack=ack
            )
        )

    def ack(
        self, receipts: str | mb.Message | Iterable[str | mb.Message], *, corr_id: str | None = None
    ) -> mb.Settled:
        """Remove leased messages (by message or receipt). A stale receipt is refused."""
        return self._run(self._core.settle("ack", receipts, {}, corr_id))

    def nack(
        self,
        receipts: str | mb.Message | Iterable[str | mb.Message],
        *,
        delay_s: float = 0.0,
        corr_id: str | None = None,
    ) -> mb.Settled:
        """Release leased messages for redelivery, after ``delay_s``."""
        return self._run(self._core.settle("nack", receipts, {"delay_s": delay_s}, corr_id))

    def extend(
        self,
        receipts: str | mb.Message | Iterable[str | mb.Message],
        *,
        visibility_s: float,
        corr_id: str | None = None,
    ) -> mb.Settled:
        """Extend leases to ``visibility_s`` from now."""
        return self._run(
            self._core.settle("extend", receipts, {"visibility_s": visibility_s}, corr_id)
        )

    def delete(self, topic: str, msg_id: str, *, corr_id: str | None = None) -> None:
        """Delete a message by id, leased or not."""
        self._run(self._core.delete(topic, msg_id, corr_id))

    def stats(self, topic: str, *, corr_id: str | None = None) -> mb.TopicStats:
        return self._run(self._core.stats(topic, corr_id))

    def dlq_list(
        self,
        topic: str,
        *,
        limit: int = 100,
        cursor: str | None = None,
        corr_id: str | None = None,
    ) -> mb.DeadLetterPage:
        """One page of the topic's dead letters; pass ``next_cursor`` for the next."""
        return self._run(self._core.dlq_list(topic, limit=limit, cursor=cursor, corr_id=corr_id))

    def dlq_redrive(
        self,
        topic: str,
        *,
        msg_ids: Iterable[str] | None = None,
        max: int = 1000,
        corr_id: str | None = None,
    ) -> int:
        """Move dead letters (all, up to ``max``, or the given ids) back to the topic."""
        return self._run(self._core.dlq_redrive(topic, msg_ids=msg_ids, max=max, corr_id=corr_id))

    def subscribe(
        self,
        topic: str,
        *,
        visibility_s: float | None = None,
        max_unacked: int | None = None,
        corr_id: str | None = None,
    ) -> Subscription:
        """Messages pushed as they arrive (Server-Sent Events), leased like ``receive``.

        ``for msg in client.subscribe("t"): ...; client.ack(msg)``. The subscription
        reconnects after a dropped connection (under the retry policy); unacked messages
        come back when their lease expires.
        """
        path, params = self._core.subscribe_request(
            topic, visibility_s=visibility_s, max_unacked=max_unacked
        )
        return Subscription(self, topic, path, params, check_corr_id(corr_id))


def _short(attempts: Attempts) -> TransportError:
    return TransportError(
        "the answer ended before all requested bytes", corr_id=attempts.corr_id, retryable=True
    )


class ObjectReader:
    """A streaming read of one object (see :meth:`Client.open`)."""

    def __init__(self, download: Download, chunks: Iterator[bytes]) -> None:
        self._dl = download
        self._chunks = chunks
        self._primed = False

    @property
    def address(self) -> Address:
        return self._dl.addr

    @property
    def size(self) -> int | None:
        """The object's size, known once the reader is entered or the first chunk read."""
        return self._dl.total

    @property
    def mime(self) -> str | None:
        return self._dl.mime

    @property
    def verified(self) -> bool:
        """True once every byte was read and hashed to the address."""
        return self._dl.verified

    def _prime(self) -> None:
        if not self._primed:
            self._primed = True
            first = next(self._chunks, None)
            assert not first, "the first item of a download is the headers marker"

    def __enter__(self) -> ObjectReader:
        self._prime()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[bytes]:
        self._prime()
        for chunk in self._chunks:
            if chunk:
                yield chunk

    def read(self) -> bytes:
        """Everything not read yet (verified)."""
        return b"".join(self)

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


class Subscription:
    """Messages of a topic as they arrive; iterate it, ``close()`` it (from any thread)."""

    def __init__(
        self,
        client: Client,
        topic: str,
        path: str,
        params: dict[str, str],
        corr_id: str,
    ) -> None:
        self.topic = topic
        self.corr_id = corr_id
        self._client = client
        self._path = path
        self._params = params
        self._closed = threading.Event()
        self._reply: httpx.Response | None = None
        self.connected = threading.Event()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """End the subscription; safe to call from another thread than the iterating one.

        A thread blocked reading the event stream is woken by shutting the socket down
        (closing it from here would race with that thread); it then sees the
        subscription closed and the iteration ends without an error.
        """
        self._closed.set()
        reply = self._reply
        if reply is None:
            return
        stream = reply.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __iter__(self) -> Iterator[mb.Message]:
        core = self._client._core
        http = self._client._http
        attempts = core.attempts(self.corr_id)
        timeout = httpx.Timeout(core.config.timeout_s, read=SUBSCRIBE_READ_TIMEOUT_S)
        while not self._closed.is_set():
            attempts.begin()
            cause: BaseException | None = None
            try:
                with http.stream(
                    "GET",
                    self._path,
                    params=self._params or None,
                    headers=core.headers(self.corr_id, {"accept": "text/event-stream"}),
                    timeout=timeout,
                ) as reply:
                    self._reply = reply
                    if reply.status_code != 200:
                        reply.read()
                        error = error_from_response(
                            reply.status_code, reply.headers, reply.content, corr_id=self.corr_id
                        )
                        step: Step = attempts.on_error(error)
                    else:
                        attempts.reset()
                        self.connected.set()
                        parser = mb.SseParser()
                        for chunk in reply.iter_raw():
                            for event in parser.feed(chunk):
                                msg = mb.event_to_message(self.topic, event, corr_id=self.corr_id)
                                if msg is not None:
                                    yield msg
                        step = attempts.on_error(_ended(self.corr_id))
            except Exception as exc:
                if self._closed.is_set():
                    return  # close() from another thread broke the read: not an error
                if not isinstance(exc, httpx.TransportError):
                    raise
                cause = exc
                step = attempts.on_transport_error(exc, during="subscription")
            finally:
                self._reply = None
                self.connected.clear()
            if self._closed.is_set():
                return
            if isinstance(step, Fail):
                raise step.error from cause
            if self._closed.wait(step.delay_s):
                return


def _ended(corr_id: str) -> RonClientError:
    return TransportError("the node ended the subscription", corr_id=corr_id, retryable=True)
