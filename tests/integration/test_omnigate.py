"""omnigate over real TLS against a node started with ``ron up``: HELLO, storage GETs,
every stream error of OAP-1 §8.1, and the TLS rules (1.3 only, ALPN ron/1)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import random
import ssl
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import httpx
import pytest
import zstandard
from cryptography import x509

from ron.proto.envelope import RonError
from ron.proto.oap import STORAGE_CHUNK, AppId, Flags, Frame, encode_frame
from ron.sdk.oap import OapClient, OapIntegrityError, client_context
from support.node import RunningNode, run_node
from support.oap import RawOap, body, ca_file, fresh_tenant, get_frame, use_cap
from support.waiting import wait_until_sync

# REFERENCE §5: the HELLO request, flags 0, everything zero (37 bytes).
HELLO_HEX = "21000000010000000000000000000000000000000000000000000000000000000000000000"
REQ, RESP, START, END = Flags.REQ, Flags.RESP, Flags.START, Flags.END
BIG = os.urandom(3 * 1024 * 1024)
SMALL = b"a small object served over OAP/1\n"

CONFIG = """
[omnigate]
storage_rps = 100000.0
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    with run_node(tmp_path_factory.mktemp("omnigate"), config=CONFIG) as n:
        use_cap(n.token)
        yield n


def put(node: RunningNode, data: bytes) -> str:
    reply = httpx.post(f"{node.http}/put", content=data, headers=node.auth, timeout=60)
    assert reply.status_code == 201, reply.text
    address: str = reply.json()["address"]
    return address


@pytest.fixture(scope="module")
def big(node: RunningNode) -> str:
    return put(node, BIG)


@pytest.fixture(scope="module")
def small(node: RunningNode) -> str:
    return put(node, SMALL)


async def raw(node: RunningNode) -> RawOap:
    return await RawOap.open(node.urls["oap"], node.data_dir)


async def assert_serves(conn: RawOap, addr: str, expected: bytes) -> None:
    """``conn`` still gets a complete, correct storage reply."""
    corr = 900 + fresh_tenant() % 1000
    conn.send(get_frame(corr, addr=addr, tenant_id=fresh_tenant()))
    frames = await conn.reply(corr)
    assert frames[-1].code == 0
    assert b"".join(f.payload for f in frames) == expected


# --- HELLO and storage -------------------------------------------------------------------


def test_oap_url_is_tls(node: RunningNode) -> None:
    assert node.urls["oap"].startswith("tls://127.0.0.1:")


async def test_raw_hello_vector_over_tls_gets_resp_end_with_max_frame(node: RunningNode) -> None:
    conn = await raw(node)
    try:
        conn.send(bytes.fromhex(HELLO_HEX))
        frame = await conn.frame()
        assert frame.flags == RESP | END
        assert frame.code == 0
        assert (frame.app_proto_id, frame.tenant_id, frame.corr_id) == (0, 0, 0)
        info = body(frame)
        assert info["max_frame"] == 1048576
        assert info["max_inflight"] == 256
        assert info["oap_versions"] == [1]
        assert info["transports"] == ["tcp+tls"]
        assert set(info["supported_flags"]) == {"EVENT", "ACK_REQ", "COMP", "APP_E2E"}
        assert info["server_version"].startswith("ron-omnigate/")
    finally:
        await conn.close()


async def test_3_mib_object_streams_in_64_kib_frames_and_hash_matches(
    node: RunningNode, big: str
) -> None:
    conn = await raw(node)
    try:
        conn.send(get_frame(42, addr=big, tenant_id=fresh_tenant()))
        frames = await conn.reply(42)
    finally:
        await conn.close()
    first, middle, last = frames[0], frames[1:-1], frames[-1]
    assert first.flags == RESP | START and len(first.payload) == STORAGE_CHUNK
    assert all(f.flags == RESP and len(f.payload) == STORAGE_CHUNK for f in middle)
    assert last.flags == RESP | END and last.code == 0 and last.payload == b""
    assert len(frames) == len(BIG) // STORAGE_CHUNK + 1
    assert all(f.app_proto_id == AppId.STORAGE for f in frames)
    data = b"".join(f.payload for f in frames)
    assert f"b3:{blake3.blake3(data).hexdigest()}" == big


async def test_sdk_get_verifies_and_writes_the_file(
    node: RunningNode, big: str, small: str, tmp_path: Path
) -> None:
    async with await OapClient.connect(
        node.urls["oap"], ca_file=ca_file(node.data_dir), cap=node.token
    ) as c:
        assert (await c.hello())["max_frame"] == 1048576
        assert await c.get(big, tmp_path / "big") == len(BIG)
        assert await c.get(small, tmp_path / "small") == len(SMALL)
        assert await c.request(AppId.STORAGE, {"op": "get", "addr": small}) == SMALL
    assert (tmp_path / "big").read_bytes() == BIG
    assert (tmp_path / "small").read_bytes() == SMALL


async def test_empty_object_is_one_empty_resp_end(node: RunningNode) -> None:
    addr = put(node, b"")
    conn = await raw(node)
    try:
        conn.send(get_frame(5, addr=addr, tenant_id=fresh_tenant()))
        [frame] = await conn.reply(5)
        assert frame.flags == RESP | END and frame.code == 0 and frame.payload == b""
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b'{"op":"get","addr":"b3:' + b"0" * 64 + b'"}', 404, "not_found"),
        (b'{"op":"get","addr":"b3:xyz"}', 400, "bad_request"),
        (b'{"op":"put","addr":"b3:00"}', 400, "bad_request"),
        (b'{"op":"get"}', 400, "bad_request"),
        (b"not json", 400, "bad_request"),
        (b'{"op":"get","path":"/tiles/1/2/3.webp"}', 404, "not_found"),
    ],
)
async def test_bad_storage_requests_get_error_frames_and_connection_goes_on(
    node: RunningNode, small: str, payload: bytes, status: int, code: str
) -> None:
    conn = await raw(node)
    try:
        tenant = fresh_tenant()
        frame = Frame(
            REQ | START | END, app_proto_id=AppId.STORAGE, tenant_id=tenant, corr_id=7,
            cap=node.token.encode(), payload=payload,
        )  # fmt: skip
        conn.send(encode_frame(frame))
        [reply] = await conn.reply(7)
        assert reply.flags == RESP | END and reply.code == status
        assert (reply.app_proto_id, reply.tenant_id) == (AppId.STORAGE, tenant)
        envelope = body(reply)
        assert envelope["code"] == code and envelope["error"] == code
        assert envelope["corr_id"] and isinstance(envelope["retryable"], bool)
        await assert_serves(conn, small, SMALL)
    finally:
        await conn.close()


async def test_unknown_apps_are_404(node: RunningNode) -> None:
    async with await OapClient.connect(
        node.urls["oap"], ca_file=ca_file(node.data_dir), cap=node.token
    ) as c:
        with pytest.raises(RonError) as unknown:
            await c.request(0x7777, b"{}")
        assert unknown.value.status == 404


async def test_mailbox_round_trip_over_oap(node: RunningNode) -> None:
    """send, recv, a stale ack, ack: the same mailbox and rules as over HTTP."""
    async with await OapClient.connect(
        node.urls["oap"], ca_file=ca_file(node.data_dir), cap=node.token
    ) as c:

        async def call(body: dict[str, object]) -> dict[str, object]:
            reply = await c.request(AppId.MAILBOX, body)
            data: dict[str, object] = json.loads(reply)
            return data

        sent = await call(
            {"op": "send", "topic": "oap-chat", "text": "hi", "idempotency_key": "k1"}
        )
        again = await call(
            {"op": "send", "topic": "oap-chat", "text": "hi", "idempotency_key": "k1"}
        )
        assert again == {"msg_id": sent["msg_id"], "duplicate": True}
        got = await call({"op": "recv", "topic": "oap-chat", "max": 10, "visibility_ms": 30000})
        [message] = got["messages"]  # type: ignore[misc]
        assert message["msg_id"] == sent["msg_id"]
        assert base64.b64decode(message["payload_b64"]) == b"hi"
        assert (await call({"op": "ack", "receipt": message["receipt"]})) == {"acked": 1, "gone": 0}
        stats = await call({"op": "stats", "topic": "oap-chat"})
        assert stats["depth"] == 0 and stats["in_flight"] == 0
        with pytest.raises(RonError) as bad:
            await call({"op": "ack", "receipt": "not-a-receipt"})
        assert bad.value.status in (400, 409)
        with pytest.raises(RonError) as unknown_op:
            await call({"op": "teleport"})
        assert unknown_op.value.status == 400


async def test_a_recv_over_oap_can_ack_the_batch_before_it(node: RunningNode) -> None:
    async with await OapClient.connect(
        node.urls["oap"], ca_file=ca_file(node.data_dir), cap=node.token
    ) as c:

        async def call(body: dict[str, object]) -> dict[str, Any]:
            data: dict[str, Any] = json.loads(await c.request(AppId.MAILBOX, body))
            return data

        for text in ("a", "b", "c"):
            await call({"op": "send", "topic": "oap-loop", "text": text})
        first = (await call({"op": "recv", "topic": "oap-loop", "max": 2}))["messages"]
        acked = [m["receipt"] for m in first]
        got = await call({"op": "recv", "topic": "oap-loop", "max": 2, "ack": acked})
        assert (got["acked"], got["gone"]) == (2, 0)
        assert [base64.b64decode(m["payload_b64"]) for m in got["messages"]] == [b"c"]
        last = [m["receipt"] for m in got["messages"]]
        done = await call({"op": "recv", "topic": "oap-loop", "ack": last})
        assert (done["messages"], done["acked"]) == ([], 1)
        stats = await call({"op": "stats", "topic": "oap-loop"})
        assert stats["depth"] == 0 and stats["in_flight"] == 0


async def test_mailbox_subscribe_pushes_events_until_the_client_ends_it(
    node: RunningNode,
) -> None:
    """subscribe opens with RESP|START, pushes one RESP|EVENT|ACK_REQ per message as it
    arrives (sent from another connection), and ends
    with RESP|END when the client sends REQ|END; acked messages are gone."""
    url, ca = node.urls["oap"], ca_file(node.data_dir)
    async with (
        await OapClient.connect(url, ca_file=ca, cap=node.token) as sub,
        await OapClient.connect(url, ca_file=ca, cap=node.token) as pub,
    ):
        messages = sub.subscribe("oap-live", visibility_ms=30000, max_unacked=5)
        first = asyncio.ensure_future(anext(messages))  # subscribed before anything is sent
        for i in range(3):
            await pub.request(AppId.MAILBOX, {"op": "send", "topic": "oap-live", "text": f"m{i}"})
        got = [await first, await anext(messages), await anext(messages)]
        assert [base64.b64decode(m["payload_b64"]) for m in got] == [b"m0", b"m1", b"m2"]
        receipts = [m["receipt"] for m in got]
        acked = json.loads(await pub.request(AppId.MAILBOX, {"op": "ack", "receipts": receipts}))
        assert acked == {"acked": 3, "gone": 0}
        await messages.aclose()  # REQ|END: the server ends the reply
        stats = json.loads(await pub.request(AppId.MAILBOX, {"op": "stats", "topic": "oap-live"}))
        assert stats["depth"] == 0 and stats["in_flight"] == 0
        # The connection is still usable after the subscription ended.
        assert await sub.hello()


async def test_subscribe_raw_frames_are_start_events_end(node: RunningNode) -> None:
    """On the wire: RESP|START, then RESP|EVENT|ACK_REQ per message, and RESP|END after
    the client's REQ|END, all on the subscription's corr_id."""
    conn = await raw(node)
    try:
        body = json.dumps({"op": "subscribe", "topic": "oap-wire"}).encode()
        start = Frame(REQ | START, app_proto_id=AppId.MAILBOX, corr_id=21,
                      cap=node.token.encode(), payload=body)  # fmt: skip
        conn.send(encode_frame(start))
        opened = await conn.frame()
        assert opened.flags == RESP | START and opened.corr_id == 21
        assert json.loads(opened.payload) == {"subscribed": "oap-wire"}
        async with await OapClient.connect(
            node.urls["oap"], ca_file=ca_file(node.data_dir), cap=node.token
        ) as pub:
            await pub.request(AppId.MAILBOX, {"op": "send", "topic": "oap-wire", "text": "x"})
        event = await conn.frame()
        assert event.flags == RESP | Flags.EVENT | Flags.ACK_REQ and event.corr_id == 21
        assert base64.b64decode(json.loads(event.payload)["payload_b64"]) == b"x"
        conn.send(encode_frame(Frame(REQ | END, app_proto_id=AppId.MAILBOX, corr_id=21)))
        [last] = await conn.reply(21)
        assert last.flags == RESP | END and last.code == 0
    finally:
        await conn.close()


async def test_subscribe_needs_a_topic_it_may_use(node: RunningNode) -> None:
    token = node.mint("chatter", topic="chat.*")
    async with await OapClient.connect(
        node.urls["oap"], ca_file=ca_file(node.data_dir), cap=token
    ) as c:
        with pytest.raises(RonError) as err:
            await anext(c.subscribe("billing"))
        assert err.value.status == 403
        with pytest.raises(RonError) as bad:
            await anext(c.subscribe("no spaces"))
        assert bad.value.status in (400, 403)


async def test_corrupted_object_never_arrives_complete(node: RunningNode, tmp_path: Path) -> None:
    data = os.urandom(1024 * 1024 + 5)
    addr = put(node, data)
    payload = next(node.data_dir.glob(f"objects/*/*/{addr[3:]}.*/payload.bin"))
    with open(payload, "r+b") as f:  # flip one byte near the end, in place
        f.seek(len(data) - 10)
        byte = f.read(1)
        f.seek(len(data) - 10)
        f.write(bytes([byte[0] ^ 0x01]))
    conn = await raw(node)
    try:
        conn.send(get_frame(3, addr=addr, tenant_id=fresh_tenant()))
        frames = await conn.reply(3)
    finally:
        await conn.close()
    assert frames[-1].code == 500
    assert sum(len(f.payload) for f in frames[:-1]) < len(data)
    async with await OapClient.connect(
        node.urls["oap"], ca_file=ca_file(node.data_dir), cap=node.token
    ) as c:
        with pytest.raises(RonError):
            await c.get(addr, tmp_path / "out")
    assert not os.listdir(tmp_path)


async def test_sdk_refuses_bytes_that_do_not_match_the_address(
    node: RunningNode, small: str, tmp_path: Path
) -> None:
    # Ask for one address, but let the server send another object's bytes: the SDK's
    # check is against the address it asked for, whatever the server claims.
    other = put(node, b"some other bytes entirely")
    async with await OapClient.connect(
        node.urls["oap"], ca_file=ca_file(node.data_dir), cap=node.token
    ) as c:
        original = c.stream

        def swapped(app: int, payload: object, **kw: object):  # type: ignore[no-untyped-def]
            return original(app, {"op": "get", "addr": other}, **kw)  # type: ignore[arg-type]

        c.stream = swapped  # type: ignore[method-assign]
        with pytest.raises(OapIntegrityError):
            await c.get(small, tmp_path / "out")
    assert not os.listdir(tmp_path)


# --- stream errors (non-fatal): the same connection and others go on --------------------


async def test_cap_without_start_is_400_and_the_connection_goes_on(
    node: RunningNode, small: str
) -> None:
    other = await raw(node)
    conn = await raw(node)
    try:
        cap_frame = "25000000 01 0100 0000 0103 " + "00" * 16 + " 0300 2a00000000000000 746f6b78"
        conn.send(bytes.fromhex(cap_frame.replace(" ", "")))
        [reply] = await conn.reply(42)
        assert reply.code == 400 and reply.flags == RESP | END
        await assert_serves(conn, small, SMALL)
        await assert_serves(other, small, SMALL)
    finally:
        await conn.close()
        await other.close()


async def test_resp_from_a_client_is_400(node: RunningNode, small: str) -> None:
    conn = await raw(node)
    try:
        conn.send(encode_frame(Frame(RESP | END, app_proto_id=AppId.STORAGE, corr_id=11)))
        [reply] = await conn.reply(11)
        assert reply.code == 400
        await assert_serves(conn, small, SMALL)
    finally:
        await conn.close()


async def test_duplicate_start_is_400_and_ends_that_stream(node: RunningNode, small: str) -> None:
    conn = await raw(node)
    try:
        tenant = fresh_tenant()
        conn.send(get_frame(12, addr=small, tenant_id=tenant, flags=REQ | START))
        conn.send(get_frame(12, addr=small, tenant_id=tenant, flags=REQ | START))
        [reply] = await conn.reply(12)
        assert reply.code == 400
        # The stream is over: its END is ignored, and the corr_id can be used again.
        conn.send(encode_frame(Frame(REQ | END, app_proto_id=AppId.STORAGE, tenant_id=tenant,
                                     corr_id=12)))  # fmt: skip
        conn.send(get_frame(12, addr=small, tenant_id=fresh_tenant()))
        frames = await conn.reply(12)
        assert frames[-1].code == 0 and b"".join(f.payload for f in frames) == SMALL
    finally:
        await conn.close()


async def test_end_without_start_is_400(node: RunningNode) -> None:
    conn = await raw(node)
    try:
        conn.send(encode_frame(Frame(REQ | END, app_proto_id=AppId.STORAGE, corr_id=13)))
        [reply] = await conn.reply(13)
        assert reply.code == 400
    finally:
        await conn.close()


async def test_comp_over_ratio_is_413_and_the_connection_goes_on(
    node: RunningNode, small: str
) -> None:
    bomb = zstandard.ZstdCompressor().compress(b"\0" * 200_000)
    assert len(bomb) * 10 < 200_000
    conn = await raw(node)
    try:
        frame = Frame(
            REQ | START | END | Flags.COMP, app_proto_id=AppId.STORAGE,
            tenant_id=fresh_tenant(), corr_id=14, cap=node.token.encode(), payload=bomb,
        )  # fmt: skip
        conn.send(encode_frame(frame))
        [reply] = await conn.reply(14)
        assert reply.code == 413 and body(reply)["code"] == "payload_too_large"
        await assert_serves(conn, small, SMALL)
    finally:
        await conn.close()


async def test_compressed_request_is_served(node: RunningNode, small: str) -> None:
    payload = (b'{"op":"get","addr":"%s","pad":"' % small.encode()) + b"x" * 300 + b'"}'
    packed = zstandard.ZstdCompressor().compress(payload)
    conn = await raw(node)
    try:
        frame = Frame(
            REQ | START | END | Flags.COMP, app_proto_id=AppId.STORAGE,
            tenant_id=fresh_tenant(), corr_id=15, cap=node.token.encode(), payload=packed,
        )  # fmt: skip
        conn.send(encode_frame(frame))
        frames = await conn.reply(15)
        assert frames[-1].code == 0 and b"".join(f.payload for f in frames) == SMALL
    finally:
        await conn.close()


# --- framing errors (fatal): error frame, close; other connections go on -----------------


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        ((1048577).to_bytes(4, "little"), 413, "frame_too_large"),
        (bytes.fromhex("20000000") + b"\0" * 32, 400, "malformed_frame"),
        (bytes.fromhex("2100000002") + b"\0" * 32, 400, "malformed_frame"),
    ],
    ids=["over-max-frame", "len-below-header", "version-2"],
)
async def test_framing_error_sends_error_frame_then_closes(
    node: RunningNode, small: str, data: bytes, status: int, reason: str
) -> None:
    before = node.metric("rejected_total", reason=reason, service="omnigate")
    other = await raw(node)
    conn = await raw(node)
    try:
        conn.send(data)
        assert await conn.eof()
        [frame] = conn.queued
        assert frame.flags == RESP | END and frame.code == status
        assert (frame.app_proto_id, frame.tenant_id, frame.corr_id) == (0, 0, 0)
        await assert_serves(other, small, SMALL)
    finally:
        await conn.close()
        await other.close()
    wait_until_sync(
        lambda: node.metric("rejected_total", reason=reason, service="omnigate") == before + 1,
        10,
        f"rejected_total{{reason={reason}}}",
    )


async def test_garbage_never_crashes_the_server(node: RunningNode, small: str) -> None:
    for seed in range(8):
        rng = random.Random(seed)
        conn = await raw(node)
        # Random bytes, then enough more that whatever length they announce is complete.
        conn.send(rng.randbytes(64 + seed * 37) + rng.randbytes(1_100_000))
        assert await conn.eof(timeout=20)
        await conn.close()
    other = await raw(node)
    try:
        await assert_serves(other, small, SMALL)
    finally:
        await other.close()


# --- TLS ---------------------------------------------------------------------------------


async def _handshake(node: RunningNode, context: ssl.SSLContext) -> RawOap:
    return await RawOap.open(node.urls["oap"], node.data_dir, context=context)


async def test_alpn_other_than_ron1_is_refused(node: RunningNode) -> None:
    before = node.metric("rejected_total", reason="alpn")
    for protocols in (["h2"], None):
        context = client_context(ca_file(node.data_dir))
        if protocols is None:
            context = ssl.create_default_context(cafile=str(ca_file(node.data_dir)))
        else:
            context.set_alpn_protocols(protocols)
        conn = await _handshake(node, context)
        try:
            conn.send(bytes.fromhex(HELLO_HEX))
            assert await conn.eof()
            assert conn.queued == []
        finally:
            await conn.close()
    wait_until_sync(lambda: node.metric("rejected_total", reason="alpn") == before + 2, 10, "alpn")


async def test_tls_below_1_3_is_refused(node: RunningNode) -> None:
    context = ssl.create_default_context(cafile=str(ca_file(node.data_dir)))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["ron/1"])
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _handshake(node, context)


async def test_server_certificate_is_not_trusted_without_the_node_ca(node: RunningNode) -> None:
    context = ssl.create_default_context()
    context.set_alpn_protocols(["ron/1"])
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(node, context)


def test_dev_ca_and_server_certificate_are_in_the_data_dir(node: RunningNode) -> None:
    tls = node.data_dir / "tls"
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((tls / key).stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((tls / "server.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((tls / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert ips == {"127.0.0.1", "::1"}


async def test_golden_metrics_count_storage_requests(node: RunningNode, small: str) -> None:
    before = node.metric("requests_total", route="storage", status="2xx", service="omnigate")
    sent = node.metric("bytes_out_total", route="storage", service="omnigate")
    async with await OapClient.connect(
        node.urls["oap"], ca_file=ca_file(node.data_dir), cap=node.token
    ) as c:
        for _ in range(3):
            await c.request(AppId.STORAGE, {"op": "get", "addr": small}, tenant_id=fresh_tenant())
    assert node.metric("requests_total", route="storage", status="2xx") >= before + 3
    assert node.metric("bytes_out_total", route="storage") >= sent + 3 * len(SMALL)
    assert node.metric("request_latency_seconds_count", route="storage") >= 3
    assert node.metric("inflight", service="omnigate") == 0


async def test_repeated_small_gets_are_answered_on_the_spot(node: RunningNode) -> None:
    """Once an object was read, verified and kept (its file a second old), a one-shot GET
    of it with a token already verified is answered by the fast path: counted there, in
    the golden metrics as any other, and with the ordinary path's frames."""
    data = os.urandom(700)
    addr = put(node, data)
    tenant = fresh_tenant()

    def fast() -> float:
        return node.metric("oap_fast_path_responses_total", service="omnigate")

    conn = await raw(node)
    try:
        deadline = time.monotonic() + 15
        for corr in itertools.count(1):
            before, served = fast(), node.metric("requests_total", route="storage")
            conn.send(get_frame(corr, addr=addr, tenant_id=tenant))
            start, end = await conn.reply(corr)
            assert (start.flags, start.code, start.payload) == (RESP | START, 0, data)
            assert (end.flags, end.code, end.payload) == (RESP | END, 0, b"")
            for frame in (start, end):
                assert (frame.app_proto_id, frame.tenant_id, frame.corr_id) == (
                    AppId.STORAGE,
                    tenant,
                    corr,
                )
            assert node.metric("requests_total", route="storage") == served + 1
            if fast() == before + 1:
                break
            assert time.monotonic() < deadline, "no answer came from the fast path"
    finally:
        await conn.close()
