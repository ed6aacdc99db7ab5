"""The omnigate connection layer on a real socket with test applications: what happens to a
running handler when its stream errors, its connection drops or its client stops reading."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from ron.kernel.config import OmnigateConfig
from ron.kernel.metrics import Metrics
from ron.proto.oap import AppId, Flags, Frame, encode_frame
from ron.services.omnigate.apps import OapRequest, Reply
from ron.services.omnigate.gate import App, Gate
from ron.services.omnigate.server import OapServerProtocol
from support.oap import RawOap, body
from support.waiting import wait_until

REQ, RESP, START, END = Flags.REQ, Flags.RESP, Flags.START, Flags.END
HELLO = encode_frame(Frame(Flags(0), corr_id=77))
STREAM, CRASH, SILENT, FLOOD = 0x0301, 0x0A01, 0x0A02, 0x0A03
WAIT_EAGER, LATER_EAGER = 0x0A04, 0x0A05


@dataclass
class Probe:
    """What the test applications saw."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


def request(app: int, corr_id: int, flags: Flags = REQ | START | END) -> bytes:
    return encode_frame(Frame(flags, app_proto_id=app, corr_id=corr_id, payload=b"{}"))


@dataclass
class Harness:
    gate: Gate
    url: str
    probe: Probe
    metrics: Metrics

    async def connect(self) -> RawOap:
        return await RawOap.open(self.url, data_dir=None)  # type: ignore[arg-type]

    def rejected(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value("rejected_total", {"reason": reason})
        return value or 0.0


@pytest.fixture(params=[False, True], ids=["task", "eager"])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """A server whose test applications start in a task, or eagerly (as storage does)."""
    eager: bool = request.param
    probe = Probe()

    async def stream_forever(req: OapRequest, reply: Reply) -> None:
        try:
            await reply.send(b"first chunk")
            probe.started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            probe.cancelled.set()
            raise

    async def crash(req: OapRequest, reply: Reply) -> None:
        raise RuntimeError("a bug in an application")

    async def silent(req: OapRequest, reply: Reply) -> None:
        return None

    async def flood(req: OapRequest, reply: Reply) -> None:
        chunk = b"\xab" * reply.chunk_size
        try:
            probe.started.set()
            while True:
                await reply.send(chunk)
        except asyncio.CancelledError:
            probe.cancelled.set()
            raise

    async def wait_at_once(req: OapRequest, reply: Reply) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            probe.cancelled.set()
            raise

    async def answer_later(req: OapRequest, reply: Reply) -> None:
        await asyncio.sleep(0)
        await reply.send(b"later")
        await asyncio.sleep(0)
        reply.end()

    settings = dataclasses.replace(OmnigateConfig(), tls=False, write_timeout_s=0.5)
    metrics = Metrics()
    apps = {
        STREAM: App("stream", stream_forever, eager=eager),
        CRASH: App("crash", crash, eager=eager),
        SILENT: App("silent", silent, eager=eager),
        FLOOD: App("flood", flood, eager=eager),
        WAIT_EAGER: App("wait", wait_at_once, eager=True),
        LATER_EAGER: App("later", answer_later, eager=True),
    }
    gate = Gate(settings, metrics, apps, tls=False)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: OapServerProtocol(gate), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Harness(gate, f"tcp://127.0.0.1:{port}", probe, metrics)
    finally:
        server.close()
        for proto in list(gate.live):
            proto.shutdown()


async def test_stream_error_cancels_the_handler_that_was_replying(harness: Harness) -> None:
    conn = await harness.connect()
    try:
        conn.send(request(STREAM, 1))
        first = await conn.frame()
        assert first.flags == RESP | START and first.payload == b"first chunk"
        await harness.probe.started.wait()
        assert harness.gate.inflight == 1
        conn.send(request(STREAM, 1))  # START on a corr_id still replying: 400
        [refused] = await conn.reply(1)
        assert refused.flags == RESP | END and refused.code == 400
        async with asyncio.timeout(5):
            await harness.probe.cancelled.wait()
        assert harness.gate.inflight == 0
        conn.send(HELLO)
        assert (await conn.reply(77))[0].code == 0
    finally:
        await conn.close()
    assert harness.rejected("stream_violation") == 1


async def test_a_crashing_application_is_500_and_the_connection_goes_on(
    harness: Harness,
) -> None:
    conn = await harness.connect()
    try:
        conn.send(request(CRASH, 1) + request(SILENT, 2) + HELLO)
        [crashed] = await conn.reply(1)
        assert crashed.code == 500 and body(crashed)["code"] == "internal"
        [silent] = await conn.reply(2)
        assert silent.code == 500
        assert (await conn.reply(77))[0].code == 0
    finally:
        await conn.close()
    assert harness.gate.inflight == 0


async def test_a_dropped_connection_cancels_its_handlers(harness: Harness) -> None:
    conn = await harness.connect()
    conn.send(request(STREAM, 1))
    await conn.frame()
    await harness.probe.started.wait()
    await conn.close()
    async with asyncio.timeout(5):
        await harness.probe.cancelled.wait()
    await wait_until(lambda: harness.gate.inflight == 0, 5, "slot released")
    await wait_until(lambda: not harness.gate.live, 5, "connection forgotten")


async def test_a_client_that_stops_reading_is_cut_after_the_write_timeout(
    harness: Harness,
) -> None:
    conn = await harness.connect()
    try:
        conn.send(request(FLOOD, 1))  # and never read the reply
        await harness.probe.started.wait()
        async with asyncio.timeout(30):
            await harness.probe.cancelled.wait()
        assert harness.gate.inflight == 0
    finally:
        await conn.close()
    assert harness.rejected("write_timeout") == 1


async def test_fatal_error_cancels_every_running_handler(harness: Harness) -> None:
    conn = await harness.connect()
    try:
        conn.send(request(STREAM, 1))
        await conn.frame()
        await harness.probe.started.wait()
        conn.send((0xFFFFFFFF).to_bytes(4, "little"))
        assert await conn.eof()
        assert [f.code for f in conn.queued] == [413]
        async with asyncio.timeout(5):
            await harness.probe.cancelled.wait()
        assert harness.gate.inflight == 0
    finally:
        await conn.close()


async def test_eager_handler_cancelled_before_its_task_ran_still_finishes(
    harness: Harness,
) -> None:
    conn = await harness.connect()
    try:
        # One write: the first request suspends at once, the second (a START on the
        # same corr_id) errors in the same callback, before the handler's task started.
        conn.send(request(WAIT_EAGER, 1) + request(WAIT_EAGER, 1))
        [refused] = await conn.reply(1)
        assert refused.code == 400
        async with asyncio.timeout(5):
            await harness.probe.cancelled.wait()
        await wait_until(lambda: harness.gate.inflight == 0, 5, "slot released")
    finally:
        await conn.close()


async def test_eager_handler_that_waits_completes_in_its_task(harness: Harness) -> None:
    conn = await harness.connect()
    try:
        conn.send(request(LATER_EAGER, 1) + request(LATER_EAGER, 2))
        for corr in (1, 2):
            frames = await conn.reply(corr)
            assert [f.flags for f in frames] == [RESP | START, RESP | END]
            assert frames[0].payload == b"later"
        assert harness.gate.inflight == 0
    finally:
        await conn.close()


async def test_hello_advertises_configured_limits(harness: Harness) -> None:
    harness.gate.apply(dataclasses.replace(harness.gate.settings, max_inflight=7))
    conn = await harness.connect()
    try:
        conn.send(HELLO)
        [hello] = await conn.reply(77)
        assert body(hello)["max_inflight"] == 7
        assert body(hello)["transports"] == ["tcp"]
    finally:
        await conn.close()
    assert AppId.STORAGE == STREAM
