"""The floor under the mailbox benchmark: a bare HTTP server over the node's own store.

Why it exists: the batch-10 target compares the node with Redis Streams, and the node's
figure mixes two costs, the durable store and everything a real front end does around
it (authentication, quotas, metrics, validation, the error envelope, the SDK). This
server keeps the first and drops the second, so the benchmark can show how far any
Python front end over this store could go on this machine.

What it is: one process per port, each a uvloop event loop with the httptools parser
(the parser the gateway uses), answering three routes with hand-written responses:

- ``POST /batch`` ``{"messages":[{"payload_b64","idempotency_key"}]}`` -> 201 msg_ids
- ``POST /receive`` -> 200, up to 10 leased messages as the gateway's JSON
- ``POST /ack`` ``{"receipts":[...]}`` -> 200 ``{"acked": n}``

Every operation is the same :class:`~ron.services.mailbox.store.MailboxStore`
transaction the gateway's workers run on a shared file (WAL, ``synchronous=normal``,
writers taking turns on the write lock, the owner checkpointing). Nothing else: no
authentication, no limits, no checks beyond the store's, keep-alive only.

``memory`` swaps the store for a queue in this process's memory (a deque of messages,
a dict of leases; nothing durable, no dedup window) and serves both the producer and the
consumer in the one process: what the same front end costs without the durable store.

Run: ``python bench/mailbox_floor.py <db> owner`` holds the file (and checkpoints it)
until stdin closes; ``python bench/mailbox_floor.py <db> serve`` (or ``memory``) binds a
free port on 127.0.0.1, prints it, and serves until stdin closes.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import socket
import sys
from pathlib import Path
from typing import Any

import httptools
import uvloop

from ron.services.mailbox.ids import UlidSource
from ron.services.mailbox.model import Delivery, Outgoing, SendResult, Settled
from ron.services.mailbox.receipts import new_tokens, parse_receipts
from ron.services.mailbox.store import MailboxStore

TOPIC = "bench"
DEDUP_WINDOW_MS = 300_000
VISIBILITY_MS = 30_000
MAX_DELIVERIES = 5


class MemoryQueue:
    """The store's three calls on a queue in memory: FIFO, leases, acks by receipt."""

    def __init__(self) -> None:
        self._ready: collections.deque[tuple[str, bytes]] = collections.deque()
        self._leased: dict[str, tuple[str, bytes]] = {}
        self._ids = UlidSource()

    def send(self, topic: str, entries: list[Outgoing], *, dedup_window_ms: int) -> list[Any]:
        ids = self._ids.take(len(entries))
        self._ready.extend(zip(ids, (e.payload for e in entries), strict=True))
        return [SendResult(msg_id) for msg_id in ids]

    def receive(self, topic: str, limit: int, vis: int, maxd: int) -> tuple[list[Any], None]:
        got = []
        for token in new_tokens(min(limit, len(self._ready))):
            msg_id, payload = self._ready.popleft()
            receipt = f"{msg_id}.1.{token}"
            self._leased[receipt] = (msg_id, payload)
            got.append(Delivery(msg_id, topic, payload, {}, 1, 0, receipt))
        return got, None

    def ack(self, receipts: list[Any]) -> tuple[Settled, None]:
        done = sum(1 for r in receipts if self._leased.pop(str(r), None) is not None)
        return Settled(done, len(receipts) - done), None

    def close(self) -> None:
        """Nothing to release (the store's interface)."""


class FloorProtocol(asyncio.Protocol):
    """One keep-alive connection: parse, run one store operation, answer."""

    def __init__(self, store: MailboxStore | MemoryQueue) -> None:
        self._store = store
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's own class

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self._url = url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self._body)
        self._body = []
        status, out = self._answer(self._url, body)
        assert self._transport is not None
        self._transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (status, len(out), out)
        )

    def _answer(self, url: bytes, body: bytes) -> tuple[bytes, bytes]:
        store = self._store
        if url == b"/batch":
            entries = [
                Outgoing(base64.b64decode(m["payload_b64"]), {}, m.get("idempotency_key"))
                for m in json.loads(body)["messages"]
            ]
            sent = store.send(TOPIC, entries, dedup_window_ms=DEDUP_WINDOW_MS)
            ids = ",".join(f'{{"msg_id":"{r.msg_id}"}}' for r in sent)
            return b"201 Created", f'{{"messages":[{ids}]}}'.encode()
        if url == b"/receive":
            got, _ = store.receive(TOPIC, 10, VISIBILITY_MS, MAX_DELIVERIES)
            items = ",".join(
                f'{{"msg_id":"{d.msg_id}","receipt":"{d.receipt}","payload_b64":'
                f'"{base64.b64encode(d.payload).decode()}","headers":{{}},'
                f'"delivery_count":{d.delivery_count}}}'
                for d in got
            )
            return b"200 OK", f'{{"messages":[{items}]}}'.encode()
        settled, _ = store.ack(parse_receipts(json.loads(body)["receipts"]))
        return b"200 OK", b'{"acked":%d,"gone":%d}' % (settled.done, settled.gone)


async def _until_stdin_closes() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def _serve(db: Path, memory: bool) -> None:
    store = MemoryQueue() if memory else MailboxStore(db, shared=True, owner=False)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = await asyncio.get_running_loop().create_server(lambda: FloorProtocol(store), sock=sock)
    print(sock.getsockname()[1], flush=True)
    await _until_stdin_closes()
    server.close()
    store.close()


async def _own(db: Path) -> None:
    store = MailboxStore(db, shared=True, owner=True)
    print("owner", flush=True)
    await _until_stdin_closes()
    store.close()


def main(argv: list[str]) -> None:
    db, role = Path(argv[0]), argv[1]
    uvloop.run(_own(db) if role == "owner" else _serve(db, memory=role == "memory"))


if __name__ == "__main__":
    main(sys.argv[1:])
