"""Run one sync-style test body against both ``Client`` and ``AsyncClient``.

``AsyncAsSync`` drives an AsyncClient on a private event loop (one loop for the
client's whole life, as httpx requires), so a test written once with plain calls checks
both shells of the SDK. Only the shape of the calls is adapted; every request goes
through the real AsyncClient code.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

from ron.sdk import AsyncClient, Client
from ron.sdk.aclient import AsyncObjectReader, AsyncSubscription

FLAVORS = ["sync", "async"]


class _Reader:
    def __init__(self, runner: asyncio.Runner, reader: AsyncObjectReader) -> None:
        self._runner = runner
        self._reader = reader

    def __enter__(self) -> _Reader:
        self._runner.run(self._reader.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        self._runner.run(self._reader.aclose())

    def __iter__(self) -> Iterator[bytes]:
        chunks = self._reader.__aiter__()
        while True:
            try:
                yield self._runner.run(anext(chunks))
            except StopAsyncIteration:
                return

    def read(self) -> bytes:
        return b"".join(self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)


class _Subscription:
    def __init__(self, runner: asyncio.Runner, sub: AsyncSubscription) -> None:
        self._runner = runner
        self._sub = sub

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            return self._runner.run(self._sub.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self._runner.run(self._sub.aclose())

    def __enter__(self) -> _Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncAsSync:
    """An AsyncClient with a synchronous face."""

    def __init__(self, factory: Callable[[], AsyncClient]) -> None:
        self._runner = asyncio.Runner()

        async def make() -> AsyncClient:
            return factory()

        self.client = self._runner.run(make())

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if inspect.isawaitable(result):
                return self._runner.run(result)  # type: ignore[arg-type]
            if isinstance(result, AsyncObjectReader):
                return _Reader(self._runner, result)
            if isinstance(result, AsyncSubscription):
                return _Subscription(self._runner, result)
            return result

        return call

    def close(self) -> None:
        try:
            self._runner.run(self.client.aclose())
        finally:
            self._runner.close()

    def __enter__(self) -> AsyncAsSync:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def make_client(flavor: str, base_url: str, **kwargs: Any) -> Any:
    """A Client, or an AsyncClient behind a synchronous face, with the same arguments."""
    if flavor == "sync":
        return Client(base_url, **kwargs)
    return AsyncAsSync(lambda: AsyncClient(base_url, **kwargs))
