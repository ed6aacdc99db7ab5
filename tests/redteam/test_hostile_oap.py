"""Hostile OAP/1 clients against a running node's omnigate (docs/specs/OAP-1.md §8, §9, §16).

Every case checks the exact frames the server answers with; then ``node_survives``
checks that nothing stayed in flight, that the same omnigate process still serves
another client the right bytes, that the node is ready and that omnigate's memory
stayed within a fixed bound: a bad client may cost its own connection, never anyone
else's.

The node's ``max_frame`` is small (128 KiB) so that the size rails (8 x max_frame for
COMP) are crossed with a few hundred kilobytes, and its idle deadline short (1 s) so
that cutting silent or trickling peers is quick (``support.redteam``). Cases that do not
interfere share one connection or run side by side, to keep the module fast.
"""

from __future__ import annotations

import asyncio
import json
import random
import struct
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import zstandard

from ron.proto.oap import AppId, Flags, Frame, encode_frame
from support.node import RunningNode
from support.oap import RawOap, body, fresh_tenant, get_frame, tenant_cap
from support.procmem import vm_kib
from support.redteam import IDLE_S, MAX_FRAME, MEMORY_BOUND_KIB, OBJECT
from support.waiting import wait_until

REQ, RESP, START, END, COMP = Flags.REQ, Flags.RESP, Flags.START, Flags.END, Flags.COMP
HELLO_CORR = 77
HELLO = encode_frame(Frame(Flags(0), corr_id=HELLO_CORR))
UNKNOWN_APP = 0x0A0A

_HEADER = struct.Struct("<IBHHHQQHQ")


def header(
    length: int,
    *,
    ver: int = 1,
    flags: int = 0,
    app: int = AppId.STORAGE,
    tenant: int = 0,
    cap_len: int = 0,
    corr: int = 0,
) -> bytes:
    """The 37-byte frame header with any field set, lies included (OAP-1 §2)."""
    lo, hi = tenant & (2**64 - 1), tenant >> 64
    return _HEADER.pack(length, ver, flags, 0, app, lo, hi, cap_len, corr)


def request(app: int, corr: int, tenant: int, payload: bytes, *, cap: bytes = b"") -> bytes:
    """A one-shot ``REQ|START|END`` with any payload."""
    flags = REQ | START | END
    frame = Frame(flags, app_proto_id=app, tenant_id=tenant, corr_id=corr, cap=cap, payload=payload)
    return encode_frame(frame, max_frame=MAX_FRAME)


@pytest.fixture(scope="module")
def pid(node: RunningNode) -> int:
    return node.service_pid("omnigate")


def cap(node: RunningNode) -> bytes:
    """A capability of a fresh tenant for START frames: its own quota bucket."""
    return tenant_cap(node, fresh_tenant())


def rejected(node: RunningNode, reason: str) -> float:
    return node.metric("rejected_total", service="omnigate", reason=reason)


async def connect(node: RunningNode) -> RawOap:
    return await RawOap.open(node.urls["oap"], node.data_dir)


async def another_client_is_served(node: RunningNode, addr: str) -> None:
    conn = await connect(node)
    try:
        conn.send(get_frame(1, addr=addr, tenant_id=fresh_tenant(), cap=cap(node)))
        frames = await conn.reply(1)
        assert frames[-1].code == 0, body(frames[-1])
        assert b"".join(f.payload for f in frames) == OBJECT
    finally:
        await conn.close()


@pytest.fixture(autouse=True)
async def node_survives(node: RunningNode, addr: str, pid: int) -> AsyncIterator[None]:
    """After each attack: no slot leaked, same process, still serving, memory bounded."""
    rss = vm_kib(pid)
    yield
    await wait_until(
        lambda: node.metric("inflight", service="omnigate") == 0, 10, "no request in flight"
    )
    await another_client_is_served(node, addr)
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"{node.admin}/readyz")).status_code == 200
    assert node.service_pid("omnigate") == pid
    grown = vm_kib(pid) - rss
    assert grown < MEMORY_BOUND_KIB, f"omnigate RSS grew by {grown} KiB"


def assert_error(
    frame: Frame, status: int, code: str, *, corr: int = 0, app: int = 0, tenant: int = 0
) -> None:
    """An error frame: ``RESP|END``, the status, the envelope code, the echoed stream."""
    assert frame.flags == RESP | END
    assert frame.code == status, body(frame)
    assert (frame.app_proto_id, frame.tenant_id, frame.corr_id) == (app, tenant, corr)
    assert body(frame)["code"] == code


async def assert_hello(conn: RawOap) -> None:
    """The connection goes on: a HELLO is answered, and nothing else was pending."""
    conn.send(HELLO)
    [hello] = await conn.reply(HELLO_CORR)
    assert hello.code == 0 and body(hello)["max_frame"] == MAX_FRAME
    assert conn.queued == []


async def closed_after(node: RunningNode, data: bytes) -> list[Frame]:
    """Send ``data`` on a new connection; every frame received before the server closed."""
    conn = await connect(node)
    try:
        conn.send(data)
        assert await conn.eof(timeout=IDLE_S + 10)
        return conn.queued
    finally:
        await conn.close()


# --- partial frames and silence (§16.3) ---------------------------------------------------


async def test_silent_peers_are_cut_at_the_idle_deadline(node: RunningNode, addr: str) -> None:
    """A frame cut inside its len, its header or its payload (len longer than the data),
    and a whole START never followed by its END: each connection gets one 408 (app,
    tenant, corr_id 0) at the idle deadline and is closed; the parked request's slot is
    freed with it (``node_survives``)."""
    whole = header(33 + 2, flags=REQ | START | END, corr=3) + b"{}"
    parked = get_frame(5, addr=addr, tenant_id=fresh_tenant(), flags=REQ | START, cap=cap(node))
    attacks = [
        whole[:2],
        whole[:20],
        header(33 + 1000, flags=REQ | START | END) + b'{"op"',
        parked,
    ]
    before = rejected(node, "idle_timeout")
    started = time.monotonic()
    silent = [asyncio.ensure_future(closed_after(node, data)) for data in attacks]
    await wait_until(lambda: node.metric("inflight", service="omnigate") == 1, 10, "parked")
    await another_client_is_served(node, addr)  # while they hang
    for frames in await asyncio.gather(*silent):
        [frame] = frames
        assert_error(frame, 408, "timeout")
    assert 0.8 * IDLE_S <= time.monotonic() - started < IDLE_S + 5
    assert rejected(node, "idle_timeout") == before + len(attacks)


async def test_trickled_frame_is_cut_at_the_deadline_although_bytes_keep_coming(
    node: RunningNode, addr: str
) -> None:
    """Bytes of an unfinished frame are not activity: one byte every 0.1 s does not hold
    the connection open past the idle deadline."""
    data = get_frame(6, addr=addr, tenant_id=fresh_tenant(), cap=cap(node))
    conn = await connect(node)
    started = time.monotonic()
    got: Frame | None = None
    try:
        for sent in range(1, len(data) + 1):
            conn.send(data[sent - 1 : sent])
            try:
                got = await conn.frame(timeout=0.1)  # also the trickle's pace
                break
            except TimeoutError:
                continue
        assert got is not None, "the whole frame went through without a cut"
        assert sent < len(data)
        assert_error(got, 408, "timeout")
        assert time.monotonic() - started < IDLE_S + 3
        assert await conn.eof()
    finally:
        await conn.close()


# --- framing errors (§8.1, fatal) ---------------------------------------------------------


def _fatal_status(blob: bytes) -> int:
    """What §8.1 says of random bytes read as the start of a frame."""
    length = int.from_bytes(blob[:4], "little")
    if length > MAX_FRAME:
        return 413
    assert length < 33 or blob[4] != 1, "this blob starts a plausible frame: pick another"
    return 400


async def test_framing_errors_get_one_fatal_error_frame_and_a_close(
    node: RunningNode, addr: str
) -> None:
    """Each on its own connection: exactly one error frame (app, tenant, corr_id 0) with
    the §8.1 status, then the server closes. Lengths over max_frame are refused from the
    four len bytes alone: nothing else is sent, so the server cannot have waited."""
    payload = json.dumps({"op": "get", "addr": addr}).encode()
    # A len that lies short: its frame is whole (but its JSON cut: a 400 on corr 5), and
    # the rest of the JSON is read as the next header, whose len is far over max_frame.
    tenant = fresh_tenant()
    token = cap(node)  # a valid capability, so what refuses corr 5 is its cut JSON
    short = (
        header(33 + len(token) + 5, flags=REQ | START | END, tenant=tenant, corr=5,
               cap_len=len(token))
        + token
        + payload
    )  # fmt: skip
    assert int.from_bytes(payload[5:9], "little") > MAX_FRAME
    blobs = [random.Random(seed).randbytes(4096) for seed in range(1, 6)]
    cases: list[tuple[bytes, int]] = [
        ((MAX_FRAME + 1).to_bytes(4, "little"), 413),
        ((0xFFFF_FFFF).to_bytes(4, "little"), 413),
        (header(32)[:5], 400),  # len below the 33-byte header
        (header(33, ver=2), 400),
        (header(33, cap_len=5), 400),  # cap_len beyond len
        (header(33 + 4, flags=REQ | START, cap_len=0xFFFF) + b"toke", 400),
        *((blob, _fatal_status(blob)) for blob in blobs),
        (short, 413),
    ]
    too_large = rejected(node, "frame_too_large")
    malformed = rejected(node, "malformed_frame")
    replies = await asyncio.gather(*(closed_after(node, data) for data, _ in cases))
    for (data, status), frames in zip(cases, replies, strict=True):
        if data is short:
            stream_error, frames = frames[0], frames[1:]
            assert_error(stream_error, 400, "bad_request", corr=5, app=AppId.STORAGE, tenant=tenant)
        [frame] = frames
        assert_error(frame, status, "payload_too_large" if status == 413 else "bad_request")
    n413 = sum(1 for _, status in cases if status == 413)
    assert rejected(node, "frame_too_large") == too_large + n413
    assert rejected(node, "malformed_frame") == malformed + len(cases) - n413


# --- stream errors (§8.1, the connection goes on) -------------------------------------------


async def test_stream_rule_violations_are_400_on_their_stream_only(
    node: RunningNode, addr: str
) -> None:
    """A cap on a continuation or on a lone END, frames in the wrong direction, an
    unknown application: one error frame each, echoing the stream, on one connection that
    keeps working (and answers a good request at the end)."""
    tenant = fresh_tenant()
    token = cap(node)
    stolen = b"ron-cap:v1:not-on-a-continuation"
    conn = await connect(node)
    before = rejected(node, "stream_violation")
    try:
        conn.send(get_frame(8, addr=addr, tenant_id=tenant, flags=REQ | START, cap=token))
        conn.send(
            header(33 + len(stolen), flags=REQ | END, tenant=tenant, cap_len=len(stolen), corr=8)
            + stolen
        )
        conn.send(header(33 + 4, flags=REQ | END, tenant=tenant, cap_len=4, corr=9) + b"toke")
        directions = {20: RESP | END, 21: START | END, 22: REQ | RESP | START | END, 23: END}
        for corr, flags in directions.items():
            conn.send(header(33 + 2, flags=int(flags), tenant=tenant, corr=corr) + b"{}")
        conn.send(request(UNKNOWN_APP, 30, tenant, b"{}", cap=token))
        for corr in (8, 9, *directions):
            [refused] = await conn.reply(corr)
            assert_error(refused, 400, "bad_request", corr=corr, app=AppId.STORAGE, tenant=tenant)
        [unknown] = await conn.reply(30)
        assert_error(unknown, 404, "not_found", corr=30, app=UNKNOWN_APP, tenant=tenant)
        conn.send(get_frame(31, addr=addr, tenant_id=fresh_tenant(), cap=token))
        assert b"".join(f.payload for f in await conn.reply(31)) == OBJECT
        await assert_hello(conn)
    finally:
        await conn.close()
    assert rejected(node, "stream_violation") == before + 2 + len(directions)


async def test_reserved_flag_bits_are_ignored_and_never_sent_back(
    node: RunningNode, addr: str
) -> None:
    payload = json.dumps({"op": "get", "addr": addr}).encode()
    token = cap(node)
    flags = int(REQ | START | END) | 0xA500
    conn = await connect(node)
    try:
        conn.send(
            header(33 + len(token) + len(payload), flags=flags, cap_len=len(token), corr=12)
            + token
            + payload
        )
        frames = await conn.reply(12)
        assert [f.flags for f in frames] == [RESP | START, RESP | END]
        assert b"".join(f.payload for f in frames) == OBJECT
        raw = bytes(conn.received)
        wire_flags = []
        while raw:
            length, _, wire, *_ = _HEADER.unpack_from(raw)
            wire_flags.append(wire)
            raw = raw[4 + length :]
        assert wire_flags == [int(RESP | START), int(RESP | END)]
    finally:
        await conn.close()


async def test_hostile_json_payloads_are_400_not_a_crash(node: RunningNode) -> None:
    """Deep nesting, invalid UTF-8, absurd numbers: the client's fault (400 on its
    stream), never a handler crash (500), for storage and mailbox alike."""
    nested = b"[" * 65_000 + b"]" * 65_000
    cases = [
        (AppId.STORAGE, nested),
        (AppId.MAILBOX, nested),
        (AppId.STORAGE, b'{"op":' * 15_000 + b"1" + b"}" * 15_000),
        (AppId.MAILBOX, b'{"op":' * 15_000 + b"1" + b"}" * 15_000),
        (AppId.STORAGE, b'{"op": "get", "addr": "\xff\xfe"}'),
        (AppId.MAILBOX, b'{"op": "send", "topic": "t", "text": "\xc3\x28"}'),
        (AppId.STORAGE, b'{"op": "get", "addr": ' + b"9" * 5000 + b"}"),
        (AppId.STORAGE, b'{"op": "get", "addr": 1e999999}'),
        (AppId.STORAGE, b'["op", "get"]'),
    ]
    tenant = fresh_tenant()
    conn = await connect(node)
    try:
        for corr, (app, payload) in enumerate(cases, start=100):
            conn.send(request(app, corr, tenant, payload, cap=cap(node)))
        for corr, (app, _) in enumerate(cases, start=100):
            [refused] = await conn.reply(corr)
            assert_error(refused, 400, "bad_request", corr=corr, app=app, tenant=tenant)
        await assert_hello(conn)
    finally:
        await conn.close()


# --- COMP (§9) --------------------------------------------------------------------------------


def _near_limit_bomb(decoded: int, *, content_size: bool) -> tuple[bytes, int]:
    """zstd that expands about 9:1 (inside the ratio rail) to ``decoded`` bytes: 100
    random bytes then 850 zeros, repeated. Returns (compressed, decoded length)."""
    rng = random.Random(7)
    data = b"".join(rng.randbytes(100) + bytes(850) for _ in range(decoded // 950 + 1))
    params = zstandard.ZstdCompressionParameters.from_level(3, write_content_size=content_size)
    return zstandard.ZstdCompressor(compression_params=params).compress(data), len(data)


def _window_bomb() -> bytes:
    """A tiny frame that declares a 16 MiB window (above 8 x max_frame)."""
    params = zstandard.ZstdCompressionParameters(window_log=24, write_content_size=False)
    obj = zstandard.ZstdCompressor(compression_params=params).compressobj()
    return obj.compress(b'{"op":"get"}') + obj.flush()


async def test_comp_bombs_and_broken_zstd_are_refused_on_their_stream(
    node: RunningNode,
) -> None:
    """Both guard rails (10:1 and 8 x max_frame, whether the frame declares its size or
    not), the window bound, and malformed zstd: one error frame each, on one connection
    that goes on."""
    ratio = zstandard.ZstdCompressor().compress(bytes(1 << 20))
    declared, size_a = _near_limit_bomb(8 * MAX_FRAME + 65_536, content_size=True)
    streamed, size_b = _near_limit_bomb(8 * MAX_FRAME + 65_536, content_size=False)
    for packed, size in ((declared, size_a), (streamed, size_b)):
        # These are about the absolute rail: inside the ratio, inside one frame.
        assert size <= 10 * len(packed) and len(packed) + 33 <= MAX_FRAME, (size, len(packed))
    rng = random.Random(5)
    text = json.dumps({"op": "get", "pad": rng.randbytes(200).hex()}).encode()
    whole = zstandard.ZstdCompressor().compress(text)
    assert len(text) <= 10 * len(whole)
    absolute = f"beyond {8 * MAX_FRAME} bytes"
    cases: list[tuple[bytes, int, str | None]] = [
        (ratio, 413, f"beyond {10 * len(ratio)} bytes"),
        (declared, 413, absolute),
        (streamed, 413, absolute),
        (_window_bomb(), 413, None),
        (b"this is not zstd at all", 400, None),
        (whole[:-5], 400, "truncated"),
        (whole + b"trailing", 400, None),
    ]
    too_large = rejected(node, "stream_too_large")
    violations = rejected(node, "stream_violation")
    tenant = fresh_tenant()
    conn = await connect(node)
    try:
        for corr, (payload, _, _) in enumerate(cases, start=200):
            frame = Frame(
                REQ | START | END | COMP,
                app_proto_id=AppId.STORAGE,
                tenant_id=tenant,
                corr_id=corr,
                cap=cap(node),
                payload=payload,
            )
            conn.send(encode_frame(frame, max_frame=MAX_FRAME))
        for corr, (_, status, message) in enumerate(cases, start=200):
            [refused] = await conn.reply(corr)
            code = "payload_too_large" if status == 413 else "bad_request"
            assert_error(refused, status, code, corr=corr, app=AppId.STORAGE, tenant=tenant)
            if message is not None:
                assert message in body(refused)["message"]
        await assert_hello(conn)
    finally:
        await conn.close()
    n413 = sum(1 for _, status, _ in cases if status == 413)
    assert rejected(node, "stream_too_large") == too_large + n413
    assert rejected(node, "stream_violation") == violations + len(cases) - n413


async def test_comp_frames_within_the_rails_still_hit_the_stream_byte_budget(
    node: RunningNode,
) -> None:
    """Each frame expands 9:1 to just under 1 MB (legal alone); 5 of them pass the 4 MiB
    per-stream budget (the default): one 413, the rest of the stream is dropped
    unanswered."""
    packed, size = _near_limit_bomb(1_000_000, content_size=True)
    assert size <= 8 * MAX_FRAME and 5 * size > 4 * 1024 * 1024
    tenant = fresh_tenant()
    frames = [(REQ | START | COMP, cap(node))]
    frames += [(REQ | COMP, b"")] * 18 + [(REQ | END | COMP, b"")]
    conn = await connect(node)
    try:
        for flags, token in frames:
            frame = Frame(
                flags,
                app_proto_id=AppId.STORAGE,
                tenant_id=tenant,
                corr_id=16,
                cap=token,
                payload=packed,
            )
            conn.send(encode_frame(frame, max_frame=MAX_FRAME))
        [refused] = await conn.reply(16)
        assert_error(refused, 413, "payload_too_large", corr=16, app=AppId.STORAGE, tenant=tenant)
        await assert_hello(conn)
    finally:
        await conn.close()


# --- many streams (§8.1, §16.2) -------------------------------------------------------------


async def test_ten_thousand_open_streams_on_one_connection(node: RunningNode, addr: str) -> None:
    """The first max_streams (128) are admitted and parked, and another client is served
    meanwhile; every START beyond gets 429 with retry_after_ms 1000. The attacker then
    falls silent and is cut at the idle deadline, its parked slots freed."""
    # Each admitted START its own tenant (a capability naming it), so its own quota
    # bucket: only the stream limit refuses. Starts beyond the limit are refused before
    # their capability is looked at, so they reuse one. Minted before connecting: on a
    # busy machine 128 mints can outlast the idle timeout of a connection left silent.
    starts = {corr: fresh_tenant() for corr in range(1, 10_001)}
    tokens = {corr: tenant_cap(node, starts[corr]) for corr in range(1, 129)}
    conn = await connect(node)
    try:
        conn.send(
            b"".join(
                encode_frame(
                    Frame(
                        REQ | START,
                        app_proto_id=AppId.STORAGE,
                        tenant_id=tenant,
                        corr_id=corr,
                        cap=tokens.get(corr, tokens[1]),
                        payload=b'{"op": "get", ',
                    )
                )
                for corr, tenant in starts.items()
            )
        )
        await wait_until(
            lambda: node.metric("inflight", service="omnigate") == 128, 30, "128 parked"
        )
        await another_client_is_served(node, addr)
        # Silent from now on: every refusal, then the idle cut, then the close.
        assert await conn.eof(timeout=IDLE_S + 30)
        *refused, cut = conn.queued
        assert len(refused) == 10_000 - 128
        for frame in refused:
            assert_error(
                frame,
                429,
                "quota_exhausted",
                corr=frame.corr_id,
                app=AppId.STORAGE,
                tenant=starts[frame.corr_id],
            )
            assert body(frame)["retry_after_ms"] == 1000
        assert sorted(f.corr_id for f in refused) == list(range(129, 10_001))
        assert_error(cut, 408, "timeout")
    finally:
        await conn.close()
