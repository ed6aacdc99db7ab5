"""The gateway under pressure: quotas, capacity, degradation, limits, bombs, metrics."""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import brotli
import httpx
import pytest
import zstandard
from prometheus_client.parser import text_string_to_metric_families

from support.node import RunningNode, run_node
from support.procmem import vm_kib
from support.rawhttp import hostport
from support.waiting import let_time_pass, wait_until_sync

KEY_A = "key-alpha-0123456789"
KEY_B = "key-bravo-0123456789"
CONFIG = f"""
[gateway]
max_inflight = 10
degraded_ratio = 0.5
header_timeout_s = 1.0
read_idle_timeout_s = 3.0

[gateway.quota]
rps = 1000
burst = 2000

[gateway.tenants.alpha]
api_keys = ["{KEY_A}"]
rps = 1
burst = 3

[gateway.tenants.bravo]
api_keys = ["{KEY_B}"]
rps = 1000
burst = 2000
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    with run_node(tmp_path_factory.mktemp("pressure"), config=CONFIG) as n:
        # Writes need a token; one for tenant "bravo" lands in the same bucket as KEY_B.
        n.bravo_token = n.mint("bravo")  # type: ignore[attr-defined]
        n.bravo = {"Authorization": f"Bearer {n.bravo_token}"}  # type: ignore[attr-defined]
        r = httpx.post(f"{n.http}/put", content=b"hello pressure", headers=n.bravo)  # type: ignore[attr-defined]
        assert r.status_code == 201, r.text
        n.addr = r.json()["address"]  # type: ignore[attr-defined]
        yield n


def test_burst_past_quota_gets_429_then_succeeds_after_retry_after(node: RunningNode) -> None:
    url = f"{node.http}/o/{node.addr}"  # type: ignore[attr-defined]
    replies = [httpx.get(url, headers={"X-Api-Key": KEY_A}) for _ in range(5)]
    codes = [r.status_code for r in replies]
    assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
    limited = next(r for r in replies if r.status_code == 429)
    body = limited.json()
    assert body["code"] == "quota_exhausted" and body["retryable"] is True
    retry_after = int(limited.headers["retry-after"])
    assert retry_after >= 1
    assert limited.headers["ratelimit-policy"] == '"requests";q=3;w=3'
    assert limited.headers["ratelimit"].startswith('"requests";r=0;')
    assert "ratelimit" in replies[0].headers and "ratelimit-policy" in replies[0].headers
    let_time_pass(retry_after)
    assert httpx.get(url, headers={"X-Api-Key": KEY_A}).status_code == 200
    assert node.metric("quota_exhaustions_total", route="/o/{addr}") >= 1


def test_unknown_api_key_is_refused_not_treated_as_anonymous(node: RunningNode) -> None:
    r = httpx.get(f"{node.http}/o/{node.addr}", headers={"X-Api-Key": "forged-key-000000000"})  # type: ignore[attr-defined]
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"


def test_request_log_lines_carry_tenant_but_never_the_key(node: RunningNode) -> None:
    corr = "log-check-1"
    httpx.get(
        f"{node.http}/o/{node.addr}",  # type: ignore[attr-defined]
        headers={"X-Api-Key": KEY_B, "X-Corr-Id": corr},
    )

    def line() -> dict[str, object] | None:
        for raw in node.logs().splitlines():
            if corr in raw:
                entry: dict[str, object] = json.loads(raw)
                if entry.get("msg") == "request":
                    return entry
        return None

    entry = wait_until_sync(line, 10, "the request log line")
    assert entry["tenant"] == "bravo" and entry["route"] == "/o/{addr}" and entry["status"] == 200
    assert {"bytes_in", "bytes_out", "duration_ms"} <= set(entry)
    assert KEY_B not in node.logs()


def _open_stalled_puts(node: RunningNode, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(hostport(node.http), timeout=10)
        s.sendall(
            f"POST /put HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {node.bravo_token}\r\n"  # type: ignore[attr-defined]
            "Content-Length: 100000\r\n\r\n".encode()
        )
        socks.append(s)
    return socks


def test_saturated_inflight_turns_unready_reads_served_writes_refused(node: RunningNode) -> None:
    socks = _open_stalled_puts(node, 5)  # 5 of 10 in flight: at the 50% degraded mark
    try:
        ready = wait_until_sync(
            lambda: (r := httpx.get(f"{node.http}/readyz")).status_code == 503 and r, 10
        )
        assert ready.json()["writes"] == "closed" and ready.json()["reads"] == "open"
        assert 1 <= int(ready.headers["retry-after"]) <= 5
        get = httpx.get(f"{node.http}/o/{node.addr}", headers={"X-Api-Key": KEY_B})  # type: ignore[attr-defined]
        assert get.status_code == 200
        put = httpx.post(f"{node.http}/put", content=b"refused", headers=node.bravo)  # type: ignore[attr-defined]
        assert put.status_code == 503 and put.json()["code"] == "unavailable"
        assert 1 <= int(put.headers["retry-after"]) <= 5
        # The node's own /readyz says so too (through the gateway's health report).
        wait_until_sync(lambda: httpx.get(f"{node.admin}/readyz").status_code == 503, 10)
    finally:
        for s in socks:
            s.close()
    wait_until_sync(lambda: httpx.get(f"{node.http}/readyz").status_code == 200, 15)
    put = httpx.post(f"{node.http}/put", content=b"accepted again", headers=node.bravo)  # type: ignore[attr-defined]
    assert put.status_code == 201


def test_slowloris_on_headers_is_cut_while_others_are_served(node: RunningNode) -> None:
    slow = socket.create_connection(hostport(node.http), timeout=10)
    slow.sendall(b"GET /o/x HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finishes its headers
    started = time.monotonic()
    other = httpx.get(f"{node.http}/o/{node.addr}", headers={"X-Api-Key": KEY_B})  # type: ignore[attr-defined]
    assert other.status_code == 200
    reply = slow.recv(65536)
    elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408")
    assert b'"code": "timeout"' in reply or b'"code":"timeout"' in reply
    assert slow.recv(65536) == b""  # and closed
    assert elapsed < 5
    slow.close()


def test_slowloris_on_body_is_cut_at_read_idle_deadline(node: RunningNode) -> None:
    s = socket.create_connection(hostport(node.http), timeout=10)
    s.sendall(
        f"POST /put HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {node.bravo_token}\r\n"  # type: ignore[attr-defined]
        "Content-Length: 1000\r\n\r\n"
        "only a little".encode()
    )
    reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408")
    s.close()
    assert node.metric("rejected_total", reason="read_timeout") >= 1


def test_oversized_headers_get_431(node: RunningNode) -> None:
    r = httpx.get(f"{node.http}/o/{node.addr}", headers={"X-Big": "a" * 100 * 1024})  # type: ignore[attr-defined]
    assert r.status_code == 431 and r.json()["code"] == "headers_too_large"
    assert node.metric("rejected_total", reason="headers_too_large") >= 1


def test_header_flood_is_cut_without_buffering_it(node: RunningNode) -> None:
    s = socket.create_connection(hostport(node.http), timeout=10)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    try:
        for _ in range(200):  # up to 20 MiB of headers; the node stops reading early
            s.sendall(b"X-Flood: " + b"z" * 100_000 + b"\r\n")
    except OSError:
        pass
    data = s.recv(65536)
    assert data.startswith(b"HTTP/1.1 431") or data == b""
    s.close()


def _gateway_hwm_kib(node: RunningNode) -> int:
    """Peak RSS summed over the gateway's workers: the bomb lands on one of them, and
    the others' peaks do not move."""
    return sum(vm_kib(node.service_pid(w), "VmHWM") for w in node.gateway_workers())


def test_zstd_bomb_is_413_and_memory_stays_flat(node: RunningNode) -> None:
    cctx = zstandard.ZstdCompressor(level=3)
    chunk = b"\0" * (1 << 20)
    comp = cctx.compressobj()
    bomb = b"".join(comp.compress(chunk) for _ in range(1024)) + comp.flush()  # 1 GiB of zeros
    before = _gateway_hwm_kib(node)
    r = httpx.post(
        f"{node.http}/put",
        content=bomb,
        headers={"Content-Encoding": "zstd", **node.bravo},  # type: ignore[attr-defined]
        timeout=60,
    )
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
    assert (_gateway_hwm_kib(node) - before) < 50 * 1024
    assert node.metric("rejected_total", reason="ratio_cap") >= 1


@pytest.mark.parametrize(
    ("coding", "encode"),
    [("gzip", gzip.compress), ("br", lambda d: brotli.compress(d, quality=5))],
)
def test_gzip_and_brotli_bombs_are_413(node: RunningNode, coding: str, encode: object) -> None:
    bomb = encode(b"\0" * (64 << 20))  # type: ignore[operator]
    r = httpx.post(
        f"{node.http}/put",
        content=bomb,
        headers={"Content-Encoding": coding, **node.bravo},  # type: ignore[attr-defined]
        timeout=60,
    )
    assert r.status_code == 413


def test_compressed_body_is_stored_decoded(node: RunningNode) -> None:
    text = b"compressible text " * 200
    r = httpx.post(
        f"{node.http}/put",
        content=zstandard.ZstdCompressor().compress(text),
        headers={"Content-Encoding": "zstd", **node.bravo},  # type: ignore[attr-defined]
    )
    assert r.status_code == 201
    got = httpx.get(f"{node.http}/o/{r.json()['address']}", headers={"X-Api-Key": KEY_B})
    assert got.content == text


def test_stacked_encodings_are_415(node: RunningNode) -> None:
    r = httpx.post(
        f"{node.http}/put",
        content=b"x",
        headers={"Content-Encoding": "gzip, br", **node.bravo},  # type: ignore[attr-defined]
    )
    assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"


def test_every_golden_metric_is_present_with_bounded_labels(node: RunningNode) -> None:
    httpx.get(f"{node.http}/o/{node.addr}", headers={"X-Api-Key": KEY_B})  # type: ignore[attr-defined]
    httpx.get(f"{node.http}/o/b3:{'0' * 64}", headers={"X-Api-Key": KEY_B})
    text = httpx.get(f"{node.admin}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "requests",
        "bytes_in",
        "bytes_out",
        "rejected",
        "request_latency_seconds",
        "inflight",
        "quota_exhaustions",
        "bus_overflow_dropped",
        "bus_lagged",
        "service_restarts",
    ):
        assert name in families, name
    requests = [s for s in families["requests"].samples if s.name == "requests_total"]
    assert {s.labels["status"] for s in requests} >= {"2xx", "4xx"}
    assert all(not s.labels["route"].startswith("/o/b3") for s in requests)
    buckets = [s for s in families["request_latency_seconds"].samples if s.name.endswith("_bucket")]
    les = {float(s.labels["le"]) for s in buckets if s.labels["le"] != "+Inf"}
    assert min(les) <= 0.0005 and max(les) >= 5
    assert node.addr[3:] not in text  # type: ignore[attr-defined]


def test_two_workers_share_one_tenants_bucket(tmp_path: Path) -> None:
    config = f"""
[gateway]
workers = 2

[gateway.tenants.alpha]
api_keys = ["{KEY_A}"]
rps = 0.01
burst = 10
"""
    with run_node(tmp_path, config=config) as n:
        status = {s["service"] for s in n.status()["services"]}
        assert {"gateway", "gateway-2"} <= status

        def one(_: int) -> int:
            with httpx.Client() as c:  # a new connection each: the kernel spreads them
                return c.get(f"{n.http}/o/b3:{'0' * 64}", headers={"X-Api-Key": KEY_A}).status_code

        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(one, range(60)))
        assert codes.count(404) == 10  # admitted: the burst, once, across both workers
        assert codes.count(429) == 50
        served = [
            n.metric("requests_total", service=w, route="/o/{addr}")
            for w in ("gateway", "gateway-2")
        ]
        assert all(v > 0 for v in served), served


def test_gateway_readyz_is_fresh_on_every_worker_right_after_start(tmp_path: Path) -> None:
    """Once ``ron up`` says ready, every gateway worker's /readyz says so too, on its
    first probe: a worker's cached view of the node (taken when it started, before the
    services after it were up) must not answer a probe."""
    with run_node(tmp_path) as n:
        statuses = []
        for _ in range(8):  # a fresh connection each: they land on either worker
            with httpx.Client() as client:
                statuses.append(client.get(f"{n.http}/readyz").status_code)
        assert statuses == [200] * 8, statuses
