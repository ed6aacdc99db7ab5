"""The SDK's content calls against a real node, each test run with Client and AsyncClient."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ron.proto.address import address_of
from ron.proto.bundle import write_bundle_offline
from ron.proto.manifest import Payment
from ron.sdk import (
    IntegrityError,
    InvalidArgument,
    NotFound,
    PaymentRequired,
    QuotaExhausted,
    RangeNotSatisfiable,
    RetryEvent,
    RetryPolicy,
)
from support.node import RunningNode, run_node
from support.sdk import FLAVORS, make_client
from support.tcpproxy import tcp_proxy
from support.waiting import wait_until_sync

TINY_KEY = "sdk-tiny-tenant-key-0001"
CONFIG = f"""
[gateway]
enforce_payments = true
max_put_bytes = 8388608

[gateway.tenants.tiny]
api_keys = ["{TINY_KEY}"]
rps = 1
burst = 1
"""
PAID_BODY = b"premium bytes\n"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    tmp = tmp_path_factory.mktemp("sdk-content")
    manifest = write_bundle_offline(
        tmp / "data",
        io.BytesIO(PAID_BODY),
        tld="paid",
        mime="text/plain",
        original_filename="premium.txt",
        payment=Payment(
            required=True, currency="USD", price_model="per_request", price=0.25, wallet="w-1"
        ),
    )
    with run_node(tmp, config=CONFIG) as n:
        n.paid = manifest.address  # type: ignore[attr-defined]
        yield n


@pytest.fixture(params=FLAVORS)
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(flavor: str, node: RunningNode) -> Iterator[Any]:
    with make_client(flavor, node.http, cap=node.token) as c:
        yield c


def request_lines(node: RunningNode, corr_id: str) -> list[dict[str, Any]]:
    out = []
    for raw in node.logs().splitlines():
        if corr_id in raw:
            entry = json.loads(raw)
            if entry.get("msg") == "request" and entry.get("corr_id") == corr_id:
                out.append(entry)
    return out


def wait_for_lines(node: RunningNode, corr_id: str, count: int) -> list[dict[str, Any]]:
    """The node's request log lines for ``corr_id`` once there are ``count`` of them."""

    def lines() -> list[dict[str, Any]] | None:
        got = request_lines(node, corr_id)
        return got if len(got) >= count else None

    return wait_until_sync(lines, 10, f"{count} log lines for {corr_id}")


def payload_file(node: RunningNode, hex_digest: str) -> Path:
    return next(node.data_dir.glob(f"objects/*/{hex_digest[:2]}/{hex_digest}.*/payload.bin"))


def corrupt_in_place(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def test_put_and_read_back_every_body_kind(client: Any, tmp_path: Path) -> None:
    data = os.urandom(300_000)
    addr = client.put(data, tld="bin", mime="application/x-test")
    assert addr.hex == address_of(data).hex and addr.tld == "bin"
    assert client.get(addr) == data
    assert client.get(str(addr)) == data  # any spelling of the address works
    src = tmp_path / "notes.txt"
    src.write_bytes(b"file body\n")
    from_file = client.put(src)
    assert client.get(from_file) == b"file body\n"
    info = client.stat(from_file)
    assert (info.size, info.mime, info.original_filename) == (10, "text/plain", "notes.txt")
    assert info.etag == from_file.etag and not info.payment_required
    streamed = client.put(iter([b"one ", bytearray(b"two "), memoryview(b"three")]), tld="txt")
    assert client.get(streamed) == b"one two three"
    child = client.put(b"child", parent=streamed, license="CC0-1.0")
    child_info = client.stat(child)
    assert child_info.parent is not None and child_info.parent.hex == streamed.hex
    assert child_info.license == "CC0-1.0"


def test_ranged_reads_match_slicing(client: Any) -> None:
    data = os.urandom(400_000)
    addr = client.put(data)
    for start, end in ((0, 1), (10, 20), (299_990, 300_010), (399_000, None), (123, 400_000)):
        assert client.get(addr, range=(start, end)) == data[start:end]
    with pytest.raises(RangeNotSatisfiable) as info:
        client.get(addr, range=(500_000, None))
    assert info.value.status == 416


def test_get_to_and_open_stream_verified_bytes(client: Any, tmp_path: Path) -> None:
    data = os.urandom(700_000)
    addr = client.put(data)
    target = tmp_path / "copy.bin"
    assert client.get_to(addr, target) == target
    assert target.read_bytes() == data
    with client.open(addr) as reader:
        assert reader.size == len(data)
        chunks = list(reader)
        assert reader.verified
    assert b"".join(chunks) == data and len(chunks) > 1


def test_exists_stat_and_not_found(client: Any, node: RunningNode) -> None:
    addr = client.put(b"exists")
    missing = address_of(b"never published")
    assert client.exists(addr) and not client.exists(missing)
    with pytest.raises(NotFound) as info:
        client.get(missing, corr_id="sdk-notfound-1")
    assert (info.value.status, info.value.code, info.value.corr_id) == (
        404,
        "not_found",
        "sdk-notfound-1",
    )
    with pytest.raises(NotFound):
        client.stat(missing)
    with pytest.raises(InvalidArgument):
        client.get("sha256:" + "0" * 64)


def test_payment_required_carries_the_price(client: Any, node: RunningNode) -> None:
    paid = node.paid  # type: ignore[attr-defined]
    with pytest.raises(PaymentRequired) as info:
        client.get(paid)
    err = info.value
    assert (err.currency, err.price_model, err.price, err.wallet) == (
        "USD",
        "per_request",
        0.25,
        "w-1",
    )
    assert not err.retryable
    assert client.exists(paid)
    assert client.stat(paid).payment_required


def test_a_corrupted_large_object_raises_integrity_error(
    client: Any, node: RunningNode, tmp_path: Path
) -> None:
    """The node breaks the stream of a large object whose stored bytes fail verification;
    the SDK reports an integrity failure (not 'not found'), and get_to leaves no file."""
    for target in (None, tmp_path / "out.bin"):
        data = os.urandom(1024 * 1024)
        addr = client.put(data)
        corrupt_in_place(payload_file(node, addr.hex), len(data) - 100)
        before = node.metric("integrity_failures_total", kind="payload")
        with pytest.raises(IntegrityError) as info:
            if target is None:
                client.get(addr)
            else:
                client.get_to(addr, target)
        assert info.value.corr_id and info.value.code == "integrity"
        assert node.metric("integrity_failures_total", kind="payload") >= before + 1
    assert list(tmp_path.iterdir()) == []


def test_the_sdk_verifies_bytes_a_middlebox_corrupted(
    client: Any, node: RunningNode, flavor: str, tmp_path: Path
) -> None:
    data = os.urandom(100_000)
    addr = client.put(data)
    with (
        tcp_proxy(node.http, default="flip", flip_offset=50_000) as proxy,
        make_client(flavor, proxy.url, cap=node.token) as via_proxy,
    ):
        with pytest.raises(IntegrityError) as info:
            via_proxy.get(addr)
        assert "do not hash" in info.value.message
        with pytest.raises(IntegrityError):
            via_proxy.get_to(addr, tmp_path / "copy.bin")
        with pytest.raises(IntegrityError), via_proxy.open(addr) as reader:
            reader.read()
    assert list(tmp_path.iterdir()) == []


def test_a_download_cut_midway_resumes_with_a_range(
    client: Any, node: RunningNode, flavor: str
) -> None:
    data = os.urandom(900_000)
    addr = client.put(data)
    events: list[RetryEvent] = []
    with (
        tcp_proxy(node.http, cut_after=250_000) as proxy,
        make_client(flavor, proxy.url, cap=node.token, on_retry=events.append) as via_proxy,
    ):
        proxy.plan.extend(["cut_body"])
        assert via_proxy.get(addr, corr_id=f"sdk-resume-{flavor}") == data
    assert len(events) == 1 and events[0].corr_id == f"sdk-resume-{flavor}"
    lines = wait_for_lines(node, f"sdk-resume-{flavor}", 2)
    # The second attempt asked only for the rest. (Sorted: with several gateway workers
    # the two requests may be served and logged by different processes, and the cut one
    # is logged when its worker notices, which can be after the resumed one.)
    assert sorted(line["status"] for line in lines) == [200, 206]


def drain_tiny_bucket(node: RunningNode) -> None:
    """Spend the tiny tenant's tokens until the node refuses: the next call gets a 429."""

    def refused() -> bool:
        reply = httpx.head(
            f"{node.http}/o/{node.paid.canonical}",  # type: ignore[attr-defined]
            headers={"X-Api-Key": TINY_KEY},
        )
        return reply.status_code == 429

    wait_until_sync(refused, 10, "the tiny bucket to be empty")


def test_put_succeeds_under_429_after_waiting_retry_after(node: RunningNode, flavor: str) -> None:
    events: list[RetryEvent] = []
    corr = f"q-put-{flavor}"
    body = b"put under pressure " + flavor.encode()
    with make_client(flavor, node.http, cap=node.mint("tiny"), on_retry=events.append) as c:
        drain_tiny_bucket(node)
        before = node.metric("quota_exhaustions_total", route="/put")
        started = time.monotonic()
        addr = c.put(body, corr_id=corr)
        elapsed = time.monotonic() - started
    assert addr.hex == address_of(body).hex
    assert {e.corr_id for e in events} == {corr}
    assert events and all(isinstance(e.error, QuotaExhausted) for e in events)
    for event in events:
        assert event.error.retry_after is not None and event.error.retry_after >= 1
        assert event.delay_s >= event.error.retry_after
    assert elapsed >= sum(e.error.retry_after or 0 for e in events)
    assert node.metric("quota_exhaustions_total", route="/put") >= before + 1
    # One corr_id for the whole call, in the node's log line of every attempt.
    lines = wait_for_lines(node, corr, len(events) + 1)
    assert [line["status"] for line in lines] == [429] * len(events) + [201]
    assert lines[-1]["tenant"] == "tiny"


def test_a_one_shot_stream_is_not_retried_under_429(node: RunningNode, flavor: str) -> None:
    events: list[RetryEvent] = []
    with make_client(flavor, node.http, cap=node.mint("tiny"), on_retry=events.append) as c:
        drain_tiny_bucket(node)
        with pytest.raises(QuotaExhausted) as info:
            c.put(iter([b"one shot"]))
    assert events == []
    assert info.value.retry_after is not None and info.value.retry_after >= 1


def test_no_retries_policy_raises_at_once(node: RunningNode, flavor: str) -> None:
    with make_client(flavor, node.http, cap=node.mint("tiny"), retry=RetryPolicy.never()) as c:
        drain_tiny_bucket(node)
        with pytest.raises(QuotaExhausted):
            c.put(b"x")
