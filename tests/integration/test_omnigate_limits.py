"""omnigate's limits on a node configured small: quota 429, inflight 503, per-stream
budgets 400/413, idle 408 and the TLS handshake timeout, and a live config reload."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import httpx
import pytest

from ron.proto.oap import AppId, Flags, Frame, encode_frame
from support.node import RunningNode, run_node
from support.oap import RawOap, body, fresh_tenant, get_frame, tenant_cap, use_cap
from support.waiting import wait_until, wait_until_sync

REQ, RESP, START, END = Flags.REQ, Flags.RESP, Flags.START, Flags.END
HELLO = encode_frame(Frame(Flags(0), corr_id=77))
SMALL = b"limits test object\n"

# burst = max(1, rate x burst_factor): one request per tenant, then one every 2 s.
CONFIG = """
[omnigate]
storage_rps = 0.5
burst_factor = 2.0
max_inflight = 2
idle_timeout_s = 2.0
handshake_timeout_s = 1.0
max_stream_frames = 4
max_stream_bytes = 4096
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    with run_node(tmp_path_factory.mktemp("omnigate-limits"), config=CONFIG) as n:
        use_cap(n.token)
        yield n


@pytest.fixture(scope="module")
def small(node: RunningNode) -> str:
    reply = httpx.post(f"{node.http}/put", content=SMALL, headers=node.auth, timeout=30)
    assert reply.status_code == 201
    address: str = reply.json()["address"]
    return address


async def raw(node: RunningNode) -> RawOap:
    return await RawOap.open(node.urls["oap"], node.data_dir)


async def served(node: RunningNode, conn: RawOap, addr: str, corr: int) -> None:
    tenant = fresh_tenant()
    conn.send(get_frame(corr, addr=addr, tenant_id=tenant, cap=tenant_cap(node, tenant)))
    frames = await conn.reply(corr)
    assert frames[-1].code == 0, body(frames[-1])
    assert b"".join(f.payload for f in frames) == SMALL


async def no_inflight(node: RunningNode) -> None:
    await wait_until(lambda: node.metric("inflight", service="omnigate") == 0, 10, "inflight 0")


async def test_quota_is_per_tenant_and_app_with_retry_after(node: RunningNode, small: str) -> None:
    await no_inflight(node)
    before = node.metric("quota_exhaustions_total", route="storage")
    conn = await raw(node)
    try:
        tenant = fresh_tenant()
        cap = tenant_cap(node, tenant)
        conn.send(get_frame(1, addr=small, tenant_id=tenant, cap=cap))
        assert (await conn.reply(1))[-1].code == 0
        conn.send(get_frame(2, addr=small, tenant_id=tenant, cap=cap))
        [refused] = await conn.reply(2)
        assert refused.flags == RESP | END and refused.code == 429
        assert refused.tenant_id == tenant and refused.app_proto_id == AppId.STORAGE
        envelope = body(refused)
        assert envelope["code"] == "quota_exhausted" and envelope["retryable"] is True
        assert 0 < envelope["retry_after_ms"] <= 2000
        await served(node, conn, small, 3)  # another tenant is not affected
    finally:
        await conn.close()
    assert node.metric("quota_exhaustions_total", route="storage") == before + 1


async def test_global_inflight_cap_is_503_while_others_are_served(
    node: RunningNode, small: str
) -> None:
    await no_inflight(node)
    parked = await raw(node)
    other = await raw(node)
    try:
        # Two requests whose END has not come yet hold both inflight slots.
        tenants = {corr: fresh_tenant() for corr in (1, 2)}
        for corr, tenant in tenants.items():
            cap = tenant_cap(node, tenant)
            parked.send(get_frame(corr, addr=small, tenant_id=tenant, flags=REQ | START, cap=cap))
        parked.send(HELLO)
        await parked.reply(77)  # the server has read (and admitted) both
        tenant = fresh_tenant()
        other.send(get_frame(5, addr=small, tenant_id=tenant, cap=tenant_cap(node, tenant)))
        [busy] = await other.reply(5)
        assert busy.code == 503
        envelope = body(busy)
        assert envelope["code"] == "unavailable" and envelope["retry_after_ms"] > 0
        # One parked request completes; its slot serves the other connection.
        end = Frame(REQ | END, app_proto_id=AppId.STORAGE, tenant_id=tenants[1], corr_id=1)
        parked.send(encode_frame(end))
        frames = await parked.reply(1)
        assert frames[-1].code == 0 and b"".join(f.payload for f in frames) == SMALL
        await served(node, other, small, 6)
    finally:
        await parked.close()
        await other.close()
    await no_inflight(node)


async def test_stream_frame_budget_is_400(node: RunningNode, small: str) -> None:
    await no_inflight(node)
    conn = await raw(node)
    try:
        tenant = fresh_tenant()
        frames = [Frame(REQ | START, app_proto_id=AppId.STORAGE, tenant_id=tenant, corr_id=9,
                        cap=tenant_cap(node, tenant), payload=b'{"op":')]  # fmt: skip
        frames += [
            Frame(REQ, app_proto_id=AppId.STORAGE, tenant_id=tenant, corr_id=9, payload=b" ")
            for _ in range(4)
        ]
        frames.append(Frame(REQ | END, app_proto_id=AppId.STORAGE, tenant_id=tenant, corr_id=9))
        conn.send(b"".join(encode_frame(f) for f in frames))
        conn.send(HELLO)
        [refused] = await conn.reply(9)
        assert refused.code == 400
        [hello] = await conn.reply(77)  # one error frame only, and the connection goes on
        assert hello.code == 0 and conn.queued == []
    finally:
        await conn.close()
    await no_inflight(node)


async def test_stream_byte_budget_is_413(node: RunningNode) -> None:
    conn = await raw(node)
    try:
        frame = Frame(REQ | START | END, app_proto_id=AppId.STORAGE, tenant_id=fresh_tenant(),
                      corr_id=10, cap=node.token.encode(), payload=b"x" * 5000)  # fmt: skip
        conn.send(encode_frame(frame))
        [refused] = await conn.reply(10)
        assert refused.code == 413
    finally:
        await conn.close()


async def test_idle_connection_gets_408_then_close(node: RunningNode, small: str) -> None:
    before = node.metric("rejected_total", reason="idle_timeout")
    conn = await raw(node)
    started = time.monotonic()
    try:
        conn.send(bytes.fromhex("21000000 0100".replace(" ", "")))  # a frame that never ends
        frame = await conn.frame(timeout=15)
        waited = time.monotonic() - started
        assert frame.flags == RESP | END and frame.code == 408
        assert (frame.app_proto_id, frame.tenant_id, frame.corr_id) == (0, 0, 0)
        assert body(frame)["code"] == "timeout"
        assert await conn.eof()
        assert waited >= 1.8
    finally:
        await conn.close()
    other = await raw(node)
    try:
        await served(node, other, small, 1)
    finally:
        await other.close()
    assert node.metric("rejected_total", reason="idle_timeout") == before + 1


async def test_tls_handshake_timeout_closes_and_is_counted(node: RunningNode) -> None:
    before = node.metric("rejected_total", reason="tls_handshake")
    host, port = node.urls["oap"].removeprefix("tls://").rsplit(":", 1)
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionResetError):
                assert await reader.read(100) == b""
        assert time.monotonic() - started >= 0.9
    finally:
        writer.close()
    await wait_until(
        lambda: node.metric("rejected_total", reason="tls_handshake") >= before + 1,
        10,
        "tls_handshake rejection",
    )


async def test_config_reload_changes_limits_for_new_connections(node: RunningNode) -> None:
    assert node.config_file is not None
    node.config_file.write_text(CONFIG.replace("max_inflight = 2", "max_inflight = 3"))

    async def advertised() -> int:
        conn = await raw(node)
        try:
            conn.send(HELLO)
            [hello] = await conn.reply(77)
            value: int = body(hello)["max_inflight"]
            return value
        finally:
            await conn.close()

    deadline = time.monotonic() + 20
    while await advertised() != 3:
        assert time.monotonic() < deadline, "reload not applied"
        await asyncio.sleep(0.1)
    wait_until_sync(lambda: node.status()["node"]["config_version"] >= 2, 10, "config version")
