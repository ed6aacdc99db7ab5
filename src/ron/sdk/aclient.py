"""The asyncio client: the same calls as :class:`ron.sdk.client.Client`, awaited.

Requests, retry decisions, verification and parsing all come from :mod:`ron.sdk.core`;
this module only awaits the sends and the waits between attempts.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import h11
import httpx

from ron.proto.address import Address
from ron.sdk import mailbox as mb
from ron.sdk import wire
from ron.sdk.awire import AsyncWirePool
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
from ron.sdk.retry import Fail, RetryEvent, RetryPolicy, Step

__all__ = ["AsyncClient", "AsyncObjectReader", "AsyncSubscription"]

T = TypeVar("T")
# What a failed send raises on either kind of connection (no complete answer).
_SEND_FAILED = (httpx.TransportError, OSError, h11.RemoteProtocolError, wire.LocalRequestError)
AsyncPutData = (
    bytes | bytearray | memoryview | os.PathLike[str] | Iterable[bytes] | AsyncIterable[bytes]
)


class AsyncClient:
    """The asyncio twin of :class:`ron.sdk.Client` (same arguments, same behaviour).

    >>> async with AsyncClient("http://127.0.0.1:8080") as ron:   # doctest: +SKIP
    ...     addr = await ron.put(b"hello")
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
        transport: httpx.AsyncBaseTransport | None = None,
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
        self._http = httpx.AsyncClient(
            base_url=config.base_url,
            timeout=config.timeout_s,
            transport=transport,
            follow_redirects=False,
        )
        # Small calls on plain connections, as Client does (docs/SDK.md).
        self._wire = (
            AsyncWirePool(config.base_url)
            if transport is None and wire.usable(config.base_url)
            else None
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> AsyncClient:
        """A client for ``RON_NODE_URL`` with ``RON_API_KEY`` / ``RON_CAP`` credentials;
        keyword arguments (``timeout``, ``retry``, ``api_key``, ``cap``, ``base_url``,
        ``on_retry``, ``transport``) win over the environment."""
        config, rest = config_from_env(env, kwargs)
        return cls(config=config, **rest)

    async def aclose(self) -> None:
        if self._wire is not None:
            await self._wire.aclose()
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- the two loops ------------------------------------------------------------------

    async def _run(self, call: Call[T]) -> T:
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
                    reply = await self._wire.request(
                        call.method,
                        call.path,
                        params=call.params,
                        headers=headers,
                        content=held,
                        timeout=timeout,
                    )
                else:
                    reply = await self._http.request(
                        call.method,
                        call.path,
                        params=call.params or None,
                        headers=headers,
                        content=(
                            call.body.async_content() if call.body is not None else call.content
                        ),
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
            await asyncio.sleep(step.delay_s)

    async def _chunks(self, dl: Download) -> AsyncIterator[bytes]:
        """Verified bytes of a download; one leading ``b""`` marks the headers' arrival."""
        attempts = self._core.attempts(dl.corr_id)
        primed = False
        while True:
            if dl.complete() and dl.finish():
                return
            attempts.begin()
            cause: BaseException | None = None
            headers = self._core.headers(dl.corr_id, dl.request_headers())
            try:
                async with self._http.stream("GET", dl.path, headers=headers) as reply:
                    if reply.status_code >= 300:
                        await reply.aread()
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
                            async for chunk in reply.aiter_raw():
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
                            step = attempts.on_error(
                                TransportError(
                                    "the answer ended before all requested bytes",
                                    corr_id=dl.corr_id,
                                    retryable=True,
                                )
                            )
            except httpx.TransportError as exc:
                cause = exc
                step = attempts.on_error(dl.on_error(attempts.transport_error(exc)))
            if isinstance(step, Fail):
                raise step.error from cause
            await asyncio.sleep(step.delay_s)

    # --- content ------------------------------------------------------------------------

    async def put(
        self,
        data: AsyncPutData,
        *,
        tld: str | None = None,
        mime: str | None = None,
        license: str | None = None,
        parent: Address | str | None = None,
        filename: str | None = None,
        corr_id: str | None = None,
    ) -> Address:
        """See :meth:`ron.sdk.Client.put`; also takes an async iterator of bytes."""
        body = PutBody(data, asynchronous=True)
        return await self._run(
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

    async def get(
        self,
        addr: Address | str,
        *,
        range: tuple[int, int | None] | None = None,
        corr_id: str | None = None,
    ) -> bytes:
        dl = self._core.download(addr, corr_id=corr_id, range=range)
        return b"".join([chunk async for chunk in self._chunks(dl)])

    async def get_to(
        self, addr: Address | str, path: os.PathLike[str] | str, *, corr_id: str | None = None
    ) -> Path:
        dl = self._core.download(addr, corr_id=corr_id, range=None)
        target = await asyncio.to_thread(AtomicFile, path)
        try:
            async for chunk in self._chunks(dl):
                await asyncio.to_thread(target.write, chunk)
            await asyncio.to_thread(target.commit)
        except BaseException:
            target.abort()
            raise
        return target.path

    def open(self, addr: Address | str, *, corr_id: str | None = None) -> AsyncObjectReader:
        """``async with client.open(addr) as r: async for chunk in r: ...``"""
        dl = self._core.download(addr, corr_id=corr_id, range=None)
        return AsyncObjectReader(dl, self._chunks(dl))

    async def stat(self, addr: Address | str, *, corr_id: str | None = None) -> ObjectStat:
        corr = check_corr_id(corr_id)
        head = self._core.found(await self._run(self._core.head(addr, corr)), addr, corr)
        manifest = await self._run(self._core.manifest(addr, corr))
        return self._core.stat_of(addr, head, manifest)

    async def exists(self, addr: Address | str, *, corr_id: str | None = None) -> bool:
        return await self._run(self._core.head(addr, check_corr_id(corr_id))) is not None

    # --- mailbox ------------------------------------------------------------------------

    async def send(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview | str,
        *,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        corr_id: str | None = None,
    ) -> mb.SendResult:
        return await self._run(
            self._core.send(
                topic, payload, headers=headers, idempotency_key=idempotency_key, corr_id=corr_id
            )
        )

    async def send_batch(
        self,
        topic: str,
        messages: Iterable[bytes | tuple[bytes, Mapping[str, str]]],
        *,
        corr_id: str | None = None,
    ) -> list[mb.SendResult]:
        return await self._run(self._core.send_batch(topic, messages, corr_id))

    async def receive(
        self,
        topic: str,
        *,
        max: int = 1,
        visibility_s: float | None = None,
        wait_s: float = 0.0,
        corr_id: str | None = None,
        ack: str | mb.Message | Iterable[str | mb.Message] | None = None,
    ) -> list[mb.Message]:
        return await self._run(
            self._core.receive(
                topic, max=max, visibility_s=visibility_s, wait_s=wait_s, corr_id=corr_id, ack=ack
            )
        )

    async def ack(
        self, receipts: str | mb.Message | Iterable[str | mb.Message], *, corr_id: str | None = None
    ) -> mb.Settled:
        return await self._run(self._core.settle("ack", receipts, {}, corr_id))

    async def nack(
        self,
        receipts: str | mb.Message | Iterable[str | mb.Message],
        *,
        delay_s: float = 0.0,
        corr_id: str | None = None,
    ) -> mb.Settled:
        return await self._run(self._core.settle("nack", receipts, {"delay_s": delay_s}, corr_id))

    async def extend(
        self,
        receipts: str | mb.Message | Iterable[str | mb.Message],
        *,
        visibility_s: float,
        corr_id: str | None = None,
    ) -> mb.Settled:
        return await self._run(
            self._core.settle("extend", receipts, {"visibility_s": visibility_s}, corr_id)
        )

    async def delete(self, topic: str, msg_id: str, *, corr_id: str | None = None) -> None:
        await self._run(self._core.delete(topic, msg_id, corr_id))

    async def stats(self, topic: str, *, corr_id: str | None = None) -> mb.TopicStats:
        return await self._run(self._core.stats(topic, corr_id))

    async def dlq_list(
        self,
        topic: str,
        *,
        limit: int = 100,
        cursor: str | None = None,
        corr_id: str | None = None,
    ) -> mb.DeadLetterPage:
        return await self._run(
            self._core.dlq_list(topic, limit=limit, cursor=cursor, corr_id=corr_id)
        )

    async def dlq_redrive(
        self,
        topic: str,
        *,
        msg_ids: Iterable[str] | None = None,
        max: int = 1000,
        corr_id: str | None = None,
    ) -> int:
        return await self._run(
            self._core.dlq_redrive(topic, msg_ids=msg_ids, max=max, corr_id=corr_id)
        )

    def subscribe(
        self,
        topic: str,
        *,
        visibility_s: float | None = None,
        max_unacked: int | None = None,
        corr_id: str | None = None,
    ) -> AsyncSubscription:
        """``async for msg in client.subscribe("t"): ...; await client.ack(msg)``"""
        path, params = self._core.subscribe_request(
            topic, visibility_s=visibility_s, max_unacked=max_unacked
        )
        return AsyncSubscription(self, topic, path, params, check_corr_id(corr_id))


class AsyncObjectReader:
    """A streaming read of one object (see :meth:`AsyncClient.open`)."""

    def __init__(self, download: Download, chunks: AsyncIterator[bytes]) -> None:
        self._dl = download
        self._chunks = chunks
        self._primed = False

    @property
    def address(self) -> Address:
        return self._dl.addr

    @property
    def size(self) -> int | None:
        return self._dl.total

    @property
    def mime(self) -> str | None:
        return self._dl.mime

    @property
    def verified(self) -> bool:
        return self._dl.verified

    async def _prime(self) -> None:
        if not self._primed:
            self._primed = True
            first = await anext(self._chunks, None)
            assert not first, "the first item of a download is the headers marker"

    async def __aenter__(self) -> AsyncObjectReader:
        await self._prime()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        await self._prime()
        async for chunk in self._chunks:
            if chunk:
                yield chunk

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self])

    async def aclose(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()


class AsyncSubscription:
    """Messages of a topic as they arrive: ``async for``; ``aclose()`` ends it."""

    def __init__(
        self,
        client: AsyncClient,
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
        self._closed = asyncio.Event()
        self.connected = asyncio.Event()
        self._iter: AsyncIterator[mb.Message] | None = None

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        self._closed.set()
        if self._iter is not None:
            aclose = getattr(self._iter, "aclose", None)
            if aclose is not None:
                await aclose()

    def __aiter__(self) -> AsyncIterator[mb.Message]:
        if self._iter is None:
            self._iter = self._messages()
        return self._iter

    async def __anext__(self) -> mb.Message:
        return await self.__aiter__().__anext__()

    async def _messages(self) -> AsyncIterator[mb.Message]:
        core = self._client._core
        http = self._client._http
        attempts = core.attempts(self.corr_id)
        timeout = httpx.Timeout(core.config.timeout_s, read=SUBSCRIBE_READ_TIMEOUT_S)
        while not self._closed.is_set():
            attempts.begin()
            cause: BaseException | None = None
            try:
                async with http.stream(
                    "GET",
                    self._path,
                    params=self._params or None,
                    headers=core.headers(self.corr_id, {"accept": "text/event-stream"}),
                    timeout=timeout,
                ) as reply:
                    if reply.status_code != 200:
                        await reply.aread()
                        error = error_from_response(
                            reply.status_code, reply.headers, reply.content, corr_id=self.corr_id
                        )
                        step: Step = attempts.on_error(error)
                    else:
                        attempts.reset()
                        self.connected.set()
                        parser = mb.SseParser()
                        async for chunk in reply.aiter_raw():
                            for event in parser.feed(chunk):
                                msg = mb.event_to_message(self.topic, event, corr_id=self.corr_id)
                                if msg is not None:
                                    yield msg
                        step = attempts.on_error(_ended(self.corr_id))
            except httpx.TransportError as exc:
                cause = exc
                step = attempts.on_transport_error(exc, during="subscription")
            finally:
                self.connected.clear()
            if self._closed.is_set():
                return
            if isinstance(step, Fail):
                raise step.error from cause
            try:
                await asyncio.wait_for(self._closed.wait(), step.delay_s)
                return
            except TimeoutError:
                pass


def _ended(corr_id: str) -> RonClientError:
    return TransportError("the node ended the subscription", corr_id=corr_id, retryable=True)
