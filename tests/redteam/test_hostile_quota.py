"""Quota storms (docs/GATEWAY.md "Tenant" and "Quota", docs/specs/OAP-1.md §16.2).

Many tenants exceed their quotas at the same time, over HTTP and over OAP, while one
well-behaved tenant keeps going: every abuser is refused with 429 and its own
Retry-After once its bucket is empty, and the well-behaved tenant's requests still
succeed (at least 99%, byte for byte). Quotas are per tenant, so an abuser can only
ever spend its own bucket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from ron.proto.oap import Flags
from support.node import RunningNode
from support.oap import RawOap, body, fresh_tenant, get_frame, tenant_cap
from support.procmem import vm_kib
from support.redteam import (
    ABUSER_KEYS,
    ANON_BURST,
    ANON_RPS,
    GOOD_KEY,
    MEMORY_BOUND_KIB,
    OAP_STORAGE_RPS,
    OBJECT,
    good_auth,
)
from support.waiting import wait_until_sync

ANONYMOUS_HOSTS = tuple(f"127.0.0.{i}" for i in range(2, 12))
"""Loopback addresses to connect from: each is its own anonymous tenant (anon:<ip>)."""
SUCCESS_FLOOR = 0.99


@pytest.fixture(autouse=True)
def node_survives(node: RunningNode, addr: str) -> Iterator[None]:
    """Both front ends: same processes, nothing in flight, memory bounded, still serving."""
    pids = {name: node.service_pid(name) for name in (*node.gateway_workers(), "omnigate")}
    rss = {name: vm_kib(pid) for name, pid in pids.items()}
    yield
    for name in pids:
        wait_until_sync(
            lambda name=name: node.metric("inflight", service=name) == 0, 10, f"{name} idle"
        )
        assert node.service_pid(name) == pids[name]
        grown = vm_kib(pids[name]) - rss[name]
        assert grown < MEMORY_BOUND_KIB, f"{name} RSS grew by {grown} KiB"
    reply = httpx.get(f"{node.http}/o/{addr}", headers={"X-Api-Key": GOOD_KEY}, timeout=10)
    assert reply.status_code == 200 and reply.content == OBJECT
    assert httpx.get(f"{node.admin}/readyz", timeout=10).status_code == 200


def test_http_quota_storm_spares_the_well_behaved_tenant(node: RunningNode, addr: str) -> None:
    """20 keyed and 10 anonymous tenants (2 requests/s, burst 4) hammer the node while
    the well-behaved tenant sends 200 reads and a few writes."""
    url = f"{node.http}/o/{addr}"
    before = node.metric("quota_exhaustions_total", service="gateway*", route="/o/{addr}")

    def abuse(who: str) -> list[httpx.Response]:
        keyed = who in ABUSER_KEYS
        transport = httpx.HTTPTransport(local_address=None if keyed else who)
        headers = {"X-Api-Key": who} if keyed else {}
        with httpx.Client(transport=transport, headers=headers, timeout=30) as client:
            return [client.get(url) for _ in range(25)]

    def behave() -> list[bool]:
        ok: list[bool] = []
        headers = {"X-Api-Key": GOOD_KEY, **good_auth(node)}
        with httpx.Client(headers=headers, timeout=30) as client:
            for i in range(200):
                if i % 50 == 0:
                    put = client.post(f"{node.http}/put", content=b"good write %d" % i)
                    ok.append(put.status_code == 201)
                reply = client.get(url)
                ok.append(reply.status_code == 200 and reply.content == OBJECT)
        return ok

    abusers = [*ABUSER_KEYS, *ANONYMOUS_HOSTS]
    started = time.monotonic()
    with ThreadPoolExecutor(len(abusers) + 1) as pool:
        good = pool.submit(behave)
        storms = dict(zip(abusers, pool.map(abuse, abusers), strict=True))
        outcomes = good.result()
    elapsed = time.monotonic() - started

    assert sum(outcomes) / len(outcomes) >= SUCCESS_FLOOR, outcomes.count(False)
    refused = 0
    for who, replies in storms.items():
        codes = [r.status_code for r in replies]
        assert set(codes) <= {200, 429}, (who, codes)
        assert ANON_BURST <= codes.count(200) <= ANON_BURST + ANON_RPS * elapsed + 1, (who, codes)
        for reply in replies:
            if reply.status_code == 429:
                refused += 1
                assert reply.json()["code"] == "quota_exhausted"
                assert int(reply.headers["retry-after"]) >= 1
                assert reply.headers["ratelimit-policy"] == '"requests";q=4;w=2'
            else:
                assert reply.content == OBJECT
    assert refused > 0
    assert (
        node.metric("quota_exhaustions_total", service="gateway*", route="/o/{addr}")
        == before + refused
    )


async def test_oap_quota_storm_spares_the_well_behaved_tenant(node: RunningNode, addr: str) -> None:
    """30 tenants each pipeline three bursts of storage GETs on their own connection,
    while one tenant sends its burst one request at a time: the abusers get their burst
    and 429 beyond it, the well-behaved tenant gets everything."""
    burst = int(OAP_STORAGE_RPS * 2)  # burst_factor 2
    before = node.metric("quota_exhaustions_total", service="omnigate", route="storage")

    async def abuse(tenant: int) -> list[int]:
        conn = await RawOap.open(node.urls["oap"], node.data_dir)
        try:
            conn.send(
                b"".join(
                    get_frame(corr, addr=addr, tenant_id=tenant, cap=tenant_cap(node, tenant))
                    for corr in range(1, 3 * burst + 1)
                )
            )
            codes = []
            for corr in range(1, 3 * burst + 1):
                frames = await conn.reply(corr)
                last = frames[-1]
                if last.code == 429:
                    assert body(last)["code"] == "quota_exhausted"
                    assert body(last)["retry_after_ms"] > 0
                elif last.code == 0:
                    assert b"".join(f.payload for f in frames) == OBJECT
                codes.append(last.code)
            return codes
        finally:
            await conn.close()

    async def behave(tenant: int) -> list[bool]:
        conn = await RawOap.open(node.urls["oap"], node.data_dir)
        try:
            ok = []
            for corr in range(1, burst + 1):
                conn.send(
                    get_frame(corr, addr=addr, tenant_id=tenant, cap=tenant_cap(node, tenant))
                )
                frames = await conn.reply(corr)
                assert frames[-1].flags & Flags.END
                ok.append(frames[-1].code == 0 and b"".join(f.payload for f in frames) == OBJECT)
            return ok
        finally:
            await conn.close()

    started = time.monotonic()
    good, *storms = await asyncio.gather(
        behave(fresh_tenant()), *(abuse(fresh_tenant()) for _ in range(30))
    )
    elapsed = time.monotonic() - started
    assert sum(good) / len(good) >= SUCCESS_FLOOR, good.count(False)
    for codes in storms:
        assert set(codes) <= {0, 429}, codes
        assert burst <= codes.count(0) <= burst + OAP_STORAGE_RPS * elapsed + 1, codes
    refused = sum(codes.count(429) for codes in storms)
    after = node.metric("quota_exhaustions_total", service="omnigate", route="storage")
    assert after == before + refused
