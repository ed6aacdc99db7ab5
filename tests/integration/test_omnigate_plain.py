"""omnigate configured for plain TCP, serving a tiles directory for ``"path"`` GETs."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from ron.proto.envelope import RonError
from ron.proto.oap import STORAGE_CHUNK, AppId, Flags, Frame, encode_frame
from ron.sdk.oap import OapClient
from support.node import RunningNode, run_node
from support.oap import RawOap, body, fresh_tenant, get_frame, use_cap

REQ, RESP, START, END = Flags.REQ, Flags.RESP, Flags.START, Flags.END
TILE = os.urandom(100_000)
# REFERENCE §5 / OAP-1 vector storage-get-path: REQ|START, app 0x0301, corr 42.
GET_PATH_HEX = (
    "4e000000010900000001030000000000000000000000000000000000002a00000000000000"
    "7b226f70223a22676574222c2270617468223a222f74696c65732f31322f3635342f31353833"
    "2e77656270227d"
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    tmp = tmp_path_factory.mktemp("omnigate-plain")
    tile = tmp / "tiles-root" / "tiles" / "12" / "654" / "1583.webp"
    tile.parent.mkdir(parents=True)
    tile.write_bytes(TILE)
    (tmp / "secret.txt").write_text("outside the tiles root\n")
    config = f"""
[omnigate]
tls = false
tiles_root = "{tmp / "tiles-root"}"

# The reference vectors are sent byte for byte, and they carry no capability.
[caps]
enforce = false
"""
    with run_node(tmp, config=config) as n:
        use_cap(n.token)
        yield n


async def raw(node: RunningNode) -> RawOap:
    return await RawOap.open(node.urls["oap"], node.data_dir)


def test_plain_tcp_is_announced_and_no_certificates_are_made(node: RunningNode) -> None:
    assert node.urls["oap"].startswith("tcp://127.0.0.1:")
    assert not (node.data_dir / "tls").exists()


async def test_hello_over_plain_tcp(node: RunningNode) -> None:
    async with await OapClient.connect(node.urls["oap"], cap=node.token) as client:
        info = await client.hello()
    assert info["transports"] == ["tcp"]
    assert info["max_frame"] == 1048576


async def test_reference_path_vector_streams_the_tile(node: RunningNode) -> None:
    conn = await raw(node)
    try:
        conn.send(bytes.fromhex(GET_PATH_HEX))  # REQ|START: the reply waits for END
        conn.send(encode_frame(Frame(REQ | END, app_proto_id=AppId.STORAGE, corr_id=42)))
        frames = await conn.reply(42)
    finally:
        await conn.close()
    assert [f.flags for f in frames] == [RESP | START, RESP, RESP | END]
    assert [len(f.payload) for f in frames] == [STORAGE_CHUNK, len(TILE) - STORAGE_CHUNK, 0]
    assert b"".join(f.payload for f in frames) == TILE


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/tiles/../../secret.txt", 400),
        ("/tiles//12", 400),
        ("/tiles/12/654/../654/1583.webp", 400),
        ("/tiles/12/654/9999.webp", 404),
        ("/tiles/12", 404),
    ],
)
async def test_bad_tile_paths_are_refused(node: RunningNode, path: str, status: int) -> None:
    conn = await raw(node)
    try:
        conn.send(get_frame(3, path=path, tenant_id=fresh_tenant()))
        [reply] = await conn.reply(3)
        assert reply.code == status, body(reply)
    finally:
        await conn.close()


async def test_sdk_request_by_path(node: RunningNode) -> None:
    async with await OapClient.connect(node.urls["oap"], cap=node.token) as client:
        data = await client.request(AppId.STORAGE, {"op": "get", "path": "tiles/12/654/1583.webp"})
        assert data == TILE
        with pytest.raises(RonError) as err:
            await client.request(AppId.STORAGE, {"op": "get", "path": "/nope"})
        assert err.value.status == 404


async def test_tls_client_hello_is_a_framing_error_on_a_plain_endpoint(node: RunningNode) -> None:
    before = node.metric("rejected_total", reason="frame_too_large")
    tls_url = node.urls["oap"].replace("tcp://", "tls://")
    with pytest.raises(ssl.SSLError):
        await OapClient.connect(tls_url, ssl_context=ssl.create_default_context(), timeout=10)
    # The ClientHello's first four bytes read as a length far over max_frame.
    assert node.metric("rejected_total", reason="frame_too_large") == before + 1


async def test_two_workers_share_one_tenants_quota(tmp_path: Path) -> None:
    config = """
[omnigate]
tls = false
workers = 2
storage_rps = 0.01
burst_factor = 1000.0
"""
    with run_node(tmp_path, config=config) as n:
        status = {s["service"] for s in n.status()["services"]}
        assert {"omnigate", "omnigate-2"} <= status
        missing = "b3:" + "0" * 64

        async def one(cap: bytes, corr: int) -> int:
            conn = await RawOap.open(n.urls["oap"], n.data_dir)  # the kernel spreads them
            try:
                conn.send(get_frame(corr, addr=missing, cap=cap))
                return (await conn.reply(corr))[-1].code
            finally:
                await conn.close()

        def served() -> list[float]:
            return [n.metric("requests_total", service=w) for w in ("omnigate", "omnigate-2")]

        # The workers keep even shares of connections only as far as each takes its turn
        # within a few milliseconds, so a round of 40 at once can still land on one
        # worker alone and prove nothing about sharing: each round has a tenant of its
        # own, the quota must hold in every round, and one round must reach both.
        shared_round = False
        for attempt in range(5):
            cap = n.mint(f"alpha{attempt}").encode()
            before = served()
            codes = await asyncio.gather(*(one(cap, i + 1) for i in range(40)))
            assert codes.count(404) == 10  # admitted: the burst, once, across both workers
            assert codes.count(429) == 30
            if all(after > was for after, was in zip(served(), before, strict=True)):
                shared_round = True
                break
        assert shared_round, "every round landed on one worker"


@pytest.mark.parametrize("tls", [False, True])
async def test_two_workers_take_even_shares_of_connections(tmp_path: Path, tls: bool) -> None:
    """An app's few long-lived connections must not all land on one worker (the first to
    wake would take every waiting one): the workers keep their shares even."""
    config = f"""
[omnigate]
tls = {"true" if tls else "false"}
workers = 2
"""
    with run_node(tmp_path, config=config) as n:
        cap = n.mint("alpha").encode()
        missing = "b3:" + "0" * 64
        conns = []
        try:
            for corr in range(1, 9):  # one at a time, each served before the next opens
                conn = await RawOap.open(n.urls["oap"], n.data_dir)
                conns.append(conn)
                conn.send(get_frame(corr, addr=missing, cap=cap))
                assert (await conn.reply(corr))[-1].code == 404
            held = [n.metric("oap_connections", service=w) for w in ("omnigate", "omnigate-2")]
        finally:
            for conn in conns:
                await conn.close()
        assert sum(held) == 8
        assert min(held) >= 3, held  # even, but for a worker slow to take its turn
