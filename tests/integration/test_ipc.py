"""The IPC transport over real Unix sockets: calls, errors, deadlines, streams, limits.

Every test synchronises on events and replies, never on sleeps. Socket paths live in a
short directory under /tmp because AF_UNIX paths are limited to 108 bytes. The core
scenarios run once more on uvloop (the loop the services use) at the end of the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import random
import shutil
import socket
import stat
import struct
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from ron.ipc import CHUNK_SIZE, CallContext, IpcClient, IpcServer, StreamReply
from ron.ipc.framing import BytesLike, FrameReader, encode
from ron.proto.envelope import ErrorCode, RonError
from support.rawipc import raw_exchange

Handler = Callable[[dict[str, Any], CallContext], Awaitable[Any]]
MiB = 1 << 20


@pytest.fixture
def sock_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="ipc", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def serving(
    sock_dir: str, handlers: dict[str, Handler], **opts: Any
) -> AsyncIterator[tuple[IpcServer, IpcClient]]:
    server = IpcServer(handlers, name="test", **opts)
    await server.start_unix(os.path.join(sock_dir, "s.sock"))
    assert server.address is not None
    client = IpcClient(server.address, pool_size=4)
    try:
        yield server, client
    finally:
        await client.close()
        await server.close(drain_timeout=1.0)


async def echo(args: dict[str, Any], ctx: CallContext) -> Any:
    return args


def pattern(seed: int, size: int) -> Iterator[bytes]:
    """Deterministic pseudo-random bytes in uneven pieces (some larger than a chunk)."""
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(left, rng.choice([1, 1000, CHUNK_SIZE - 1, CHUNK_SIZE, 3 * CHUNK_SIZE + 7]))
        yield rng.randbytes(n)
        left -= n


def digest(seed: int, size: int) -> str:
    h = hashlib.sha256()
    for piece in pattern(seed, size):
        h.update(piece)
    return h.hexdigest()


# ---- calls and errors -----------------------------------------------------------------


async def test_round_trip(sock_dir: str) -> None:
    async with serving(sock_dir, {"echo": echo}) as (_, client):
        args = {"s": "héllo", "b": b"\x00\xff", "n": [1, -2, 3.5, None, True], "d": {"k": {}}}
        assert await client.call("echo", args) == args
        assert await client.call("echo") == {}
        results = await asyncio.gather(*(client.call("echo", {"i": i}) for i in range(50)))
        assert results == [{"i": i} for i in range(50)]


async def test_corr_id_and_deadline_reach_the_handler(sock_dir: str) -> None:
    seen: list[tuple[int, float]] = []

    async def inspect(args: dict[str, Any], ctx: CallContext) -> None:
        seen.append((ctx.corr_id, ctx.remaining()))
        assert ctx.body is None and ctx.method == "inspect"

    async with serving(sock_dir, {"inspect": inspect}) as (_, client):
        await client.call("inspect", timeout=3.0)
        await client.call("inspect", timeout=3.0)
    (id1, left1), (id2, _) = seen
    assert id1 != id2 and id1 > 0
    assert 2.0 < left1 < 3.0  # the server got the remaining budget, not the full one


async def test_ron_error_propagates_with_its_fields(sock_dir: str) -> None:
    async def refuse(args: dict[str, Any], ctx: CallContext) -> Any:
        raise RonError(
            ErrorCode.PAYMENT_REQUIRED, "pay first", retry_after=2.5, extra={"price": 12}
        )

    async with serving(sock_dir, {"refuse": refuse, "echo": echo}) as (_, client):
        with pytest.raises(RonError) as info:
            await client.call("refuse")
        assert info.value.code is ErrorCode.PAYMENT_REQUIRED
        assert info.value.message == "pay first"
        assert info.value.retry_after == 2.5
        assert info.value.extra == {"price": 12}
        assert await client.call("echo", {"after": 1}) == {"after": 1}


async def test_handler_crash_is_internal_and_server_keeps_serving(sock_dir: str) -> None:
    async def crash(args: dict[str, Any], ctx: CallContext) -> Any:
        raise ZeroDivisionError("secret detail")

    async with serving(sock_dir, {"crash": crash, "echo": echo}) as (_, client):
        for _ in range(3):
            with pytest.raises(RonError) as info:
                await client.call("crash")
            assert info.value.code is ErrorCode.INTERNAL
            assert info.value.retryable
            assert "secret detail" not in info.value.message
        assert await client.call("echo", {"ok": 1}) == {"ok": 1}


async def test_unknown_method_is_bad_request(sock_dir: str) -> None:
    async with serving(sock_dir, {"echo": echo}) as (_, client):
        with pytest.raises(RonError) as info:
            await client.call("nope.nothing")
        assert info.value.code is ErrorCode.BAD_REQUEST
        assert "unknown method nope.nothing" in info.value.message


async def test_unencodable_or_huge_reply_is_internal(sock_dir: str) -> None:
    async def weird(args: dict[str, Any], ctx: CallContext) -> Any:
        return object()

    async def huge(args: dict[str, Any], ctx: CallContext) -> Any:
        return b"x" * (2 * MiB)

    async with serving(sock_dir, {"weird": weird, "huge": huge, "echo": echo}) as (_, client):
        for method in ("weird", "huge"):
            with pytest.raises(RonError) as info:
                await client.call(method)
            assert info.value.code is ErrorCode.INTERNAL
        assert await client.call("echo", {"x": 1}) == {"x": 1}


async def test_oversized_request_is_refused_client_side(sock_dir: str) -> None:
    async with serving(sock_dir, {"echo": echo}) as (_, client):
        with pytest.raises(RonError) as info:
            await client.call("echo", {"blob": b"x" * (2 * MiB)})
        assert info.value.code is ErrorCode.PAYLOAD_TOO_LARGE
        assert await client.call("echo", {"x": 1}) == {"x": 1}


# ---- deadlines ------------------------------------------------------------------------


async def test_deadline_cancels_the_handler_and_replies_timeout(sock_dir: str) -> None:
    cancelled = asyncio.Event()

    async def stuck(args: dict[str, Any], ctx: CallContext) -> Any:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async with serving(sock_dir, {"stuck": stuck, "echo": echo}) as (_, client):
        with pytest.raises(RonError) as info:
            await client.call("stuck", timeout=0.2)
        # The server's own deadline is set slightly earlier, so its definitive reply
        # normally wins; on a very loaded machine our local timer may fire first.
        assert info.value.code in (ErrorCode.TIMEOUT, ErrorCode.UPSTREAM_TIMEOUT)
        assert info.value.retryable
        await asyncio.wait_for(cancelled.wait(), 5)
        assert await client.call("echo", {"x": 1}) == {"x": 1}


async def test_server_deadline_reply_is_timeout(sock_dir: str) -> None:
    async def stuck(args: dict[str, Any], ctx: CallContext) -> Any:
        await asyncio.Event().wait()

    async with serving(sock_dir, {"stuck": stuck}) as (server, _):
        assert server.address is not None
        req = encode({"id": 5, "m": "stuck", "a": {}, "dl": 0.05, "s": False})
        expired = encode({"id": 6, "m": "stuck", "a": {}, "dl": -1.0, "s": False})
        reader, writer = await asyncio.open_unix_connection(server.address)
        frames = FrameReader()
        writer.write(req + expired)
        replies: list[dict[str, Any]] = []
        while len(replies) < 2:
            replies += frames.feed(await reader.read(65536))
        writer.close()
        assert [r["id"] for r in replies] == [5, 6]
        assert all(r["err"]["code"] == "timeout" for r in replies)


async def test_client_deadline_is_upstream_timeout(sock_dir: str) -> None:
    """A peer that accepts and never answers: only our own deadline can end the call."""
    path = os.path.join(sock_dir, "mute.sock")
    release = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    mute_server = await asyncio.start_unix_server(mute, path)
    client = IpcClient(path, pool_size=1)
    try:
        with pytest.raises(RonError) as info:
            await client.call("anything", timeout=0.1)
        assert info.value.code is ErrorCode.UPSTREAM_TIMEOUT
    finally:
        release.set()
        await client.close()
        mute_server.close()


async def test_pool_exhaustion_waits_within_the_deadline(sock_dir: str) -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def hold(args: dict[str, Any], ctx: CallContext) -> Any:
        entered.set()
        await gate.wait()
        return "held"

    async with serving(sock_dir, {"hold": hold, "echo": echo}) as (server, _):
        assert server.address is not None
        client = IpcClient(server.address, pool_size=1)
        try:
            first = asyncio.create_task(client.call("hold"))
            await entered.wait()
            with pytest.raises(RonError) as info:
                await client.call("echo", timeout=0.1)
            assert info.value.code is ErrorCode.UPSTREAM_TIMEOUT
            waiting = asyncio.create_task(client.call("echo", {"queued": 1}))
            gate.set()
            assert await first == "held"
            assert await waiting == {"queued": 1}
        finally:
            await client.close()


# ---- hostile or broken peers ----------------------------------------------------------


async def test_malformed_frame_gets_error_reply_and_server_keeps_serving(sock_dir: str) -> None:
    async with serving(sock_dir, {"echo": echo}) as (server, client):
        assert server.address is not None
        garbage = struct.pack(">I", 6) + b"\xc1\xc1garb"
        replies, closed = await raw_exchange(server.address, garbage)
        assert closed
        assert len(replies) == 1
        assert replies[0]["id"] == 0
        assert replies[0]["err"]["code"] == "bad_request"
        # A well-framed message of the wrong kind is refused the same way.
        replies, _ = await raw_exchange(server.address, encode({"id": 4, "ok": 1}))
        assert replies == [{"id": 4, "err": replies[0]["err"]}]
        assert replies[0]["err"]["code"] == "bad_request"
        assert await client.call("echo", {"still": "up"}) == {"still": "up"}


async def test_oversized_length_prefix_is_refused_without_reading_the_body(
    sock_dir: str,
) -> None:
    async with serving(sock_dir, {"echo": echo}) as (server, client):
        assert server.address is not None
        # Claims 4 GiB - 1 and sends none of it: an answer proves nothing was awaited
        # (or allocated) for the body.
        replies, closed = await raw_exchange(server.address, b"\xff\xff\xff\xff")
        assert closed
        assert [r["err"]["code"] for r in replies] == ["payload_too_large"]
        assert await client.call("echo", {"still": "up"}) == {"still": "up"}


async def test_bad_frames_inside_an_upload_fail_that_call_only(sock_dir: str) -> None:
    outcomes: list[str] = []

    async def sink(args: dict[str, Any], ctx: CallContext) -> Any:
        assert ctx.body is not None
        try:
            async for _ in ctx.body:
                pass
        except RonError as exc:
            outcomes.append(exc.code.value)
            raise
        return "whole"

    async with serving(sock_dir, {"sink": sink, "echo": echo}) as (server, client):
        assert server.address is not None
        head = encode({"id": 3, "m": "sink", "a": {}, "dl": 30.0, "s": True})
        good = encode({"id": 3, "c": b"abc"})
        for tail in (
            encode({"id": 4, "c": b"wrong call"}),
            encode({"id": 3, "ok": 1}),
            struct.pack(">I", 2) + b"\xc1\xc1",
            b"\xff\xff\xff\xff",
        ):
            replies, closed = await raw_exchange(server.address, head + good + tail)
            assert closed
            assert [(r["id"], r["err"]["code"]) for r in replies] in (
                [(3, "bad_request")],
                [(3, "payload_too_large")],
            )
        assert outcomes == ["bad_request", "bad_request", "bad_request", "payload_too_large"]
        assert await client.call("echo", {"still": "up"}) == {"still": "up"}


async def test_random_garbage_never_takes_the_server_down(sock_dir: str) -> None:
    rng = random.Random(1234)
    async with serving(sock_dir, {"echo": echo}) as (server, client):
        assert server.address is not None
        blobs = [rng.randbytes(rng.randrange(1, 300)) for _ in range(60)]
        blobs += [struct.pack(">I", len(b) + 1) + b"\x81" + b for b in blobs[:30]]
        for blob in blobs:
            replies, _ = await raw_exchange(server.address, blob)
            assert len(replies) <= 1
            for reply in replies:
                assert reply["err"]["code"] in ("bad_request", "payload_too_large")
        assert await client.call("echo", {"still": "up"}) == {"still": "up"}


async def test_unreachable_service_is_upstream_unavailable(sock_dir: str) -> None:
    client = IpcClient(os.path.join(sock_dir, "absent.sock"))
    try:
        with pytest.raises(RonError) as info:
            await client.call("echo")
        assert info.value.code is ErrorCode.UPSTREAM_UNAVAILABLE
        assert info.value.retryable
    finally:
        await client.close()


async def test_client_survives_a_server_restart(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "r.sock")
    client = IpcClient(path, pool_size=2)
    try:
        for generation in range(3):
            server = IpcServer({"echo": echo})
            await server.start_unix(path)
            await asyncio.gather(*(client.call("echo") for _ in range(4)))
            assert await client.call("echo", {"g": generation}) == {"g": generation}
            await server.close()
        with pytest.raises(RonError) as info:
            await client.call("echo")
        assert info.value.code is ErrorCode.UPSTREAM_UNAVAILABLE
    finally:
        await client.close()


def dead_socket_file(path: str) -> None:
    """What a crashed service leaves behind: a socket file nobody listens on."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.close()


def exists(path: str) -> bool:
    return os.path.exists(path)


async def test_socket_file_is_private_and_stale_files_are_replaced(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "p.sock")
    dead_socket_file(path)
    server = IpcServer({"echo": echo})
    await server.start_unix(path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        second = IpcServer({"echo": echo})
        with pytest.raises(OSError) as info:  # a live server is never displaced
            await second.start_unix(path)
        assert info.value.errno == errno.EADDRINUSE
        client = IpcClient(path)
        assert await client.call("echo", {"x": 1}) == {"x": 1}
        await client.close()
    finally:
        await server.close()
    assert not exists(path)
    regular = os.path.join(sock_dir, "file")
    dead_socket_file(regular)
    os.unlink(regular)
    os.mkdir(regular)  # anything that is not a socket is left alone
    with pytest.raises(FileExistsError):
        await IpcServer({}).start_unix(regular)
    assert exists(regular)


# ---- streams --------------------------------------------------------------------------


async def test_stream_20mib_in_with_hash_check(sock_dir: str) -> None:
    largest: list[int] = [0]

    async def sink(args: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        assert ctx.body is not None
        h = hashlib.sha256()
        n = 0
        async for chunk in ctx.body:
            largest[0] = max(largest[0], len(chunk))
            h.update(chunk)
            n += len(chunk)
        return {"n": n, "sha256": h.hexdigest(), "tag": args["tag"]}

    async def body(seed: int, size: int) -> AsyncIterator[BytesLike]:
        scratch = bytearray(4 * CHUNK_SIZE)  # refilled after every yield
        for i, piece in enumerate(pattern(seed, size)):
            if i % 3 == 0:
                # A reused buffer: the transport must copy it before we overwrite it.
                scratch[: len(piece)] = piece
                yield memoryview(scratch)[: len(piece)]
            else:
                yield bytearray(piece) if i % 3 == 1 else piece

    async with serving(sock_dir, {"sink": sink, "echo": echo}) as (_, client):
        size = 20 * MiB
        result = await client.call_stream_in("sink", {"tag": "t"}, body(1, size), timeout=60)
        assert result == {"n": size, "sha256": digest(1, size), "tag": "t"}
        assert 0 < largest[0] <= CHUNK_SIZE
        # The connection is clean afterwards and carries another call.
        assert await client.call("echo", {"x": 1}) == {"x": 1}
        empty = await client.call_stream_in("sink", {"tag": "e"}, body(2, 0))
        assert empty == {"n": 0, "sha256": hashlib.sha256().hexdigest(), "tag": "e"}


async def test_stream_20mib_out_with_hash_check(sock_dir: str) -> None:
    async def source(args: dict[str, Any], ctx: CallContext) -> StreamReply:
        async def chunks() -> AsyncIterator[bytes]:
            for piece in pattern(args["seed"], args["size"]):
                yield piece

        return StreamReply({"size": args["size"]}, chunks())

    async with serving(sock_dir, {"source": source, "echo": echo}) as (_, client):
        size = 20 * MiB
        h = hashlib.sha256()
        largest = 0
        async with client.call_stream_out("source", {"seed": 3, "size": size}, timeout=60) as (
            meta,
            chunks,
        ):
            assert meta == {"size": size}
            async for chunk in chunks:
                largest = max(largest, len(chunk))
                h.update(chunk)
        assert h.hexdigest() == digest(3, size)
        assert 0 < largest <= CHUNK_SIZE
        assert await client.call("echo", {"x": 1}) == {"x": 1}


async def test_stream_error_midway_is_raised_by_the_iterator(sock_dir: str) -> None:
    async def flaky(args: dict[str, Any], ctx: CallContext) -> StreamReply:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"a" * 1000
            yield b"b" * 1000
            raise RonError(ErrorCode.NOT_FOUND, "object vanished")

        return StreamReply("meta", chunks())

    async with serving(sock_dir, {"flaky": flaky, "echo": echo}) as (_, client):
        got = b""
        with pytest.raises(RonError) as info:
            async with client.call_stream_out("flaky") as (meta, chunks):
                assert meta == "meta"
                async for chunk in chunks:
                    got += chunk
        assert info.value.code is ErrorCode.NOT_FOUND
        assert got == b"a" * 1000 + b"b" * 1000
        assert await client.call("echo", {"x": 1}) == {"x": 1}


async def test_abandoned_stream_drops_the_connection_and_closes_the_source(
    sock_dir: str,
) -> None:
    closed = asyncio.Event()

    async def endless(args: dict[str, Any], ctx: CallContext) -> StreamReply:
        async def chunks() -> AsyncIterator[bytes]:
            try:
                while True:
                    yield b"z" * CHUNK_SIZE
            finally:
                closed.set()

        return StreamReply(None, chunks())

    async with serving(sock_dir, {"endless": endless, "echo": echo}) as (_, client):
        async with client.call_stream_out("endless", timeout=30) as (_, chunks):
            async for _chunk in chunks:
                break
        await asyncio.wait_for(closed.wait(), 10)  # the server noticed and cleaned up
        with pytest.raises(RuntimeError):
            await chunks.__anext__()
        assert await client.call("echo", {"x": 1}) == {"x": 1}


async def test_stream_and_plain_methods_mismatch(sock_dir: str) -> None:
    async def source(args: dict[str, Any], ctx: CallContext) -> StreamReply:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"x"

        return StreamReply(1, chunks())

    async with serving(sock_dir, {"source": source, "echo": echo}) as (_, client):
        with pytest.raises(RonError) as info:
            await client.call("source")
        assert info.value.code is ErrorCode.INTERNAL
        async with client.call_stream_out("echo", {"plain": True}) as (meta, chunks):
            assert meta == {"plain": True}
            assert [c async for c in chunks] == []
        with pytest.raises(RonError) as info:
            async with client.call_stream_out("nope"):
                pass
        assert info.value.code is ErrorCode.BAD_REQUEST
        assert await client.call("echo", {"x": 1}) == {"x": 1}


async def test_early_reply_to_an_upload_and_failing_bodies(sock_dir: str) -> None:
    seen: list[str] = []

    async def picky(args: dict[str, Any], ctx: CallContext) -> Any:
        assert ctx.body is not None
        first = await ctx.body.__anext__()
        if first.startswith(b"bad"):
            raise RonError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "not that")
        try:
            async for _ in ctx.body:
                pass
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return "read all"

    async def endless_bad() -> AsyncIterator[bytes]:
        while True:
            yield b"bad" + bytes(CHUNK_SIZE)

    async def breaks() -> AsyncIterator[bytes]:
        yield b"good"
        raise ValueError("the caller's own bug")

    async with serving(sock_dir, {"picky": picky, "echo": echo}) as (_, client):
        with pytest.raises(RonError) as info:
            await client.call_stream_in("picky", {}, endless_bad(), timeout=30)
        assert info.value.code is ErrorCode.UNSUPPORTED_MEDIA_TYPE
        with pytest.raises(ValueError, match="own bug"):
            await client.call_stream_in("picky", {}, breaks(), timeout=30)
        assert await client.call("echo", {"x": 1}) == {"x": 1}
    # The caller dropped the upload: the handler is cancelled, it never sees a short body.
    assert seen == ["cancelled"]


async def test_unread_upload_is_skipped_and_the_connection_reused(sock_dir: str) -> None:
    async def ignore(args: dict[str, Any], ctx: CallContext) -> Any:
        return "ignored"

    async def small() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 100

    async with serving(sock_dir, {"ignore": ignore, "echo": echo}) as (server, _):
        assert server.address is not None
        client = IpcClient(server.address, pool_size=1)
        try:
            assert await client.call_stream_in("ignore", {}, small()) == "ignored"
            assert await client.call("echo", {"x": 1}) == {"x": 1}
        finally:
            await client.close()


async def test_caller_going_away_cancels_the_handler(sock_dir: str) -> None:
    entered = asyncio.Event()
    cancelled = asyncio.Event()

    async def stuck(args: dict[str, Any], ctx: CallContext) -> Any:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async with serving(sock_dir, {"stuck": stuck, "echo": echo}) as (server, client):
        assert server.address is not None
        _, writer = await asyncio.open_unix_connection(server.address)
        writer.write(encode({"id": 1, "m": "stuck", "a": {}, "dl": 300.0, "s": False}))
        await entered.wait()
        writer.close()
        await asyncio.wait_for(cancelled.wait(), 10)
        assert server.inflight == 0
        assert await client.call("echo", {"x": 1}) == {"x": 1}


async def test_streams_are_flow_controlled_in_both_directions(sock_dir: str) -> None:
    """A stalled reader bounds what the writer produces: nothing piles up in memory."""
    produced = {"out": 0, "in": 0}
    handler_got_first = asyncio.Event()
    release = asyncio.Event()
    bound = 8 * MiB // CHUNK_SIZE  # socket buffers + write buffer + a few frames

    async def source(args: dict[str, Any], ctx: CallContext) -> StreamReply:
        async def chunks() -> AsyncIterator[bytes]:
            while True:
                produced["out"] += 1
                yield bytes(CHUNK_SIZE)

        return StreamReply(None, chunks())

    async def slow_sink(args: dict[str, Any], ctx: CallContext) -> Any:
        assert ctx.body is not None
        await ctx.body.__anext__()
        handler_got_first.set()
        await release.wait()
        return "enough"

    async def upload() -> AsyncIterator[bytes]:
        while True:
            produced["in"] += 1
            yield bytes(CHUNK_SIZE)

    async with serving(sock_dir, {"source": source, "sink": slow_sink}) as (_, client):
        async with client.call_stream_out("source", timeout=30) as (_, chunks):
            await chunks.__anext__()
            for _ in range(300):
                await asyncio.sleep(0)  # scheduling yields: give the writer every chance
            assert produced["out"] <= bound
        call = asyncio.create_task(client.call_stream_in("sink", {}, upload(), timeout=30))
        await handler_got_first.wait()
        for _ in range(300):
            await asyncio.sleep(0)
        assert produced["in"] <= bound
        release.set()
        assert await call == "enough"


# ---- limits and shutdown ---------------------------------------------------------------


async def test_max_inflight_saturation_is_unavailable(sock_dir: str) -> None:
    gate = asyncio.Event()
    both_in = asyncio.Event()
    inside = 0

    async def hold(args: dict[str, Any], ctx: CallContext) -> Any:
        nonlocal inside
        inside += 1
        if inside == 2:
            both_in.set()
        await gate.wait()
        return "done"

    async with serving(sock_dir, {"hold": hold, "echo": echo}, max_inflight=2) as (server, c):
        held = [asyncio.create_task(c.call("hold")) for _ in range(2)]
        await both_in.wait()
        assert server.inflight == 2
        with pytest.raises(RonError) as info:
            await c.call("echo", {"x": 1})
        assert info.value.code is ErrorCode.UNAVAILABLE
        assert info.value.retryable
        gate.set()
        assert await asyncio.gather(*held) == ["done", "done"]
        assert await c.call("echo", {"x": 1}) == {"x": 1}


async def test_max_connections_is_unavailable(sock_dir: str) -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def hold(args: dict[str, Any], ctx: CallContext) -> Any:
        entered.set()
        await gate.wait()

    async with serving(sock_dir, {"hold": hold}, max_connections=1) as (server, c):
        held = asyncio.create_task(c.call("hold"))
        await entered.wait()
        assert server.address is not None
        replies, closed = await raw_exchange(server.address, b"")
        assert closed and [r["err"]["code"] for r in replies] == ["unavailable"]
        gate.set()
        await held


async def test_close_drains_in_flight_calls(sock_dir: str) -> None:
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def slow(args: dict[str, Any], ctx: CallContext) -> Any:
        entered.set()
        await gate.wait()
        return "finished"

    server = IpcServer({"slow": slow, "echo": echo})
    path = os.path.join(sock_dir, "d.sock")
    await server.start_unix(path)
    client = IpcClient(path, pool_size=4)
    try:
        await asyncio.gather(*(client.call("echo") for _ in range(3)))  # idle connections
        call = asyncio.create_task(client.call("slow", timeout=30))
        await entered.wait()
        closing = asyncio.create_task(server.close(drain_timeout=30))
        await asyncio.sleep(0)  # a scheduling yield (not a timed wait): close() starts
        assert not closing.done()
        other = IpcClient(path)
        with pytest.raises(RonError) as info:  # no longer accepting
            await other.call("echo")
        assert info.value.code is ErrorCode.UPSTREAM_UNAVAILABLE
        await other.close()
        gate.set()
        assert await call == "finished"
        await closing
        assert not exists(path)
    finally:
        await client.close()


async def test_close_cancels_calls_still_running_at_the_drain_deadline(sock_dir: str) -> None:
    cancelled = asyncio.Event()
    entered = asyncio.Event()

    async def stuck(args: dict[str, Any], ctx: CallContext) -> Any:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    server = IpcServer({"stuck": stuck})
    path = os.path.join(sock_dir, "c.sock")
    await server.start_unix(path)
    client = IpcClient(path)
    try:
        call = asyncio.create_task(client.call("stuck", timeout=30))
        await entered.wait()
        await server.close(drain_timeout=0.05)
        assert cancelled.is_set()
        with pytest.raises(RonError) as info:
            await call
        assert info.value.code is ErrorCode.UPSTREAM_UNAVAILABLE
    finally:
        await client.close()


async def test_closed_client_refuses_calls(sock_dir: str) -> None:
    async with serving(sock_dir, {"echo": echo}) as (_, client):
        await client.call("echo")
        await client.close()
        with pytest.raises(RonError) as info:
            await client.call("echo")
        assert info.value.code is ErrorCode.UPSTREAM_UNAVAILABLE


# ---- the same scenarios on uvloop ------------------------------------------------------

UVLOOP_SCENARIOS = [
    test_round_trip,
    test_ron_error_propagates_with_its_fields,
    test_handler_crash_is_internal_and_server_keeps_serving,
    test_deadline_cancels_the_handler_and_replies_timeout,
    test_malformed_frame_gets_error_reply_and_server_keeps_serving,
    test_oversized_length_prefix_is_refused_without_reading_the_body,
    test_client_survives_a_server_restart,
    test_stream_20mib_in_with_hash_check,
    test_stream_20mib_out_with_hash_check,
    test_stream_error_midway_is_raised_by_the_iterator,
    test_abandoned_stream_drops_the_connection_and_closes_the_source,
    test_early_reply_to_an_upload_and_failing_bodies,
    test_max_inflight_saturation_is_unavailable,
    test_close_drains_in_flight_calls,
    test_caller_going_away_cancels_the_handler,
    test_streams_are_flow_controlled_in_both_directions,
]


@pytest.mark.parametrize("scenario", UVLOOP_SCENARIOS, ids=lambda f: f.__name__[5:])
def test_on_uvloop(scenario: Callable[[str], Awaitable[None]], sock_dir: str) -> None:
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario(sock_dir))  # type: ignore[arg-type]
