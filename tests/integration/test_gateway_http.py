"""Every HTTP rule of the gateway, byte-exact, against a node started with ``ron up``."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import blake3
import httpx
import pytest

from ron.proto.bundle import write_bundle_offline
from ron.proto.manifest import Payment
from support.node import RunningNode, run_node
from support.rawhttp import raw_get
from support.waiting import wait_until_sync

ALPHABET = b"abcdefghijklmnopqrstuvwxyz"
ALPHA_HEX = blake3.blake3(ALPHABET).hexdigest()
ALPHA = f"b3:{ALPHA_HEX}"
PAID_BODY = b"premium content\n"

CONFIG = """
[gateway]
enforce_payments = false
max_put_bytes = 4194304
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    tmp = tmp_path_factory.mktemp("gw")
    # A paid bundle, packed offline before the node starts (as `ron pack` does).
    write_bundle_offline(
        tmp / "data",
        _bytes_io(PAID_BODY),
        tld="paid",
        mime="text/plain",
        original_filename="premium.txt",
        payment=Payment(
            required=True, currency="USD", price_model="per_request", price=0.25, wallet="w-1"
        ),
    )
    with run_node(tmp, config=CONFIG) as n:
        reply = httpx.post(
            f"{n.http}/put?tld=txt",
            content=ALPHABET,
            headers={"Content-Type": "text/plain", **n.auth},
        )
        assert reply.status_code == 201, reply.text
        yield n


def _bytes_io(data: bytes):  # type: ignore[no-untyped-def]
    import io

    return io.BytesIO(data)


def get(node: RunningNode, path: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{node.http}{path}", headers=headers, timeout=30)


def test_put_returns_201_with_address_and_location(node: RunningNode) -> None:
    reply = httpx.post(f"{node.http}/put?tld=txt", content=ALPHABET, headers=node.auth)
    assert reply.status_code == 201
    assert reply.json()["address"] == ALPHA
    assert reply.headers["location"] == f"/o/{ALPHA}.txt"
    assert reply.headers["x-corr-id"]


def test_full_get_serves_bytes_with_reference_headers(node: RunningNode) -> None:
    r = get(node, f"/o/{ALPHA}", **{"Accept-Encoding": "identity"})
    assert r.status_code == 200
    assert r.content == ALPHABET
    assert r.headers["etag"] == f'"{ALPHA}"'
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert r.headers["vary"] == "Accept-Encoding"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-type"] == "text/plain"
    assert r.headers["accept-ranges"] == "bytes"
    assert "content-encoding" not in r.headers


@pytest.mark.parametrize(
    "spelling",
    [
        ALPHA,
        f"blake3:{ALPHA_HEX}",
        ALPHA_HEX,
        ALPHA_HEX.upper(),
        f"{ALPHA}.txt",
        f"{ALPHA}/payload.bin",
    ],
)
def test_every_address_spelling_serves_the_same_object(node: RunningNode, spelling: str) -> None:
    r = get(node, f"/o/{spelling}", **{"Accept-Encoding": "identity"})
    assert r.status_code == 200 and r.content == ALPHABET


def test_head_has_headers_and_length_but_no_body(node: RunningNode) -> None:
    r = httpx.head(f"{node.http}/o/{ALPHA}", headers={"Accept-Encoding": "identity"})
    assert r.status_code == 200
    assert r.headers["content-length"] == "26"
    assert r.content == b""


@pytest.mark.parametrize(
    ("spec", "body", "content_range"),
    [
        ("bytes=0-3", b"abcd", "bytes 0-3/26"),
        ("bytes=-5", b"vwxyz", "bytes 21-25/26"),
        ("bytes=20-", b"uvwxyz", "bytes 20-25/26"),
        ("bytes=24-99", b"yz", "bytes 24-25/26"),
    ],
)
def test_single_ranges_get_206(
    node: RunningNode, spec: str, body: bytes, content_range: str
) -> None:
    r = get(node, f"/o/{ALPHA}", Range=spec)
    assert r.status_code == 206
    assert r.content == body
    assert r.headers["content-range"] == content_range
    assert r.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize("spec", ["bytes=30-", "bytes=0-1,3-4", "bytes=26-26"])
def test_unsatisfiable_or_multiple_ranges_get_416(node: RunningNode, spec: str) -> None:
    r = get(node, f"/o/{ALPHA}", Range=spec)
    assert r.status_code == 416
    assert r.headers["content-range"] == "bytes */26"
    assert r.json()["code"] == "range_not_satisfiable"


def test_if_range_with_matching_etag_honours_range(node: RunningNode) -> None:
    r = get(node, f"/o/{ALPHA}", Range="bytes=0-3", **{"If-Range": f'"{ALPHA}"'})
    assert r.status_code == 206 and r.content == b"abcd"


def test_if_range_with_other_etag_serves_full_200(node: RunningNode) -> None:
    r = get(
        node,
        f"/o/{ALPHA}",
        Range="bytes=0-3",
        **{"If-Range": '"b3:00"', "Accept-Encoding": "identity"},
    )
    assert r.status_code == 200 and r.content == ALPHABET


@pytest.mark.parametrize(
    "inm",
    [f'"{ALPHA}"', ALPHA, f'W/"{ALPHA}"', "*", f'"b3:0000", "{ALPHA}"'],
)
def test_if_none_match_gets_304_with_cache_headers(node: RunningNode, inm: str) -> None:
    r = get(node, f"/o/{ALPHA}", **{"If-None-Match": inm})
    assert r.status_code == 304
    assert r.content == b""
    assert r.headers["etag"] == f'"{ALPHA}"'
    assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert r.headers["vary"] == "Accept-Encoding"


def test_if_none_match_other_etag_gets_200(node: RunningNode) -> None:
    assert get(node, f"/o/{ALPHA}", **{"If-None-Match": '"b3:0000"'}).status_code == 200


@pytest.mark.parametrize(
    ("accept", "coding"),
    [
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, zstd;q=0.5, br;q=0.4", "zstd"),
        ("br;q=0, zstd;q=0", None),
        ("identity", None),
    ],
)
def test_accept_encoding_serves_verified_variants(
    node: RunningNode, accept: str, coding: str | None
) -> None:
    with httpx.Client() as client:  # decode ourselves: check the stored variant
        r = client.get(f"{node.http}/o/{ALPHA}", headers={"Accept-Encoding": accept})
        assert r.status_code == 200
        assert r.headers.get("content-encoding") == coding
        assert r.content == ALPHABET if coding in (None, "br", "zstd") else True


def test_manifest_rel_is_served_with_short_cache(node: RunningNode) -> None:
    r = get(node, f"/o/{ALPHA}/Manifest.toml")
    assert r.status_code == 200
    assert r.headers["cache-control"] == "public, max-age=60"
    assert r.headers["etag"] == f'"{ALPHA}"'
    assert f'hash_hex = "{ALPHA_HEX}"' in r.text


@pytest.mark.parametrize(
    "rel",
    ["../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "/etc/passwd", "a/../../x", "%00"],
)
def test_rel_that_leaves_the_bundle_is_400(node: RunningNode, rel: str) -> None:
    status, head, body = raw_get(node, f"/o/{ALPHA}/{rel}")
    assert status == 400
    envelope = json.loads(body)
    assert envelope["code"] == "bad_request" and envelope["retryable"] is False
    assert f"x-corr-id: {envelope['corr_id']}".encode() in head.lower()


def test_unknown_rel_is_404(node: RunningNode) -> None:
    assert get(node, f"/o/{ALPHA}/other.txt").status_code == 404


@pytest.mark.parametrize("addr", ["zz", "b3:xyz", "sha256:" + "0" * 64, "b3:" + "0" * 63])
def test_malformed_address_is_400_envelope(node: RunningNode, addr: str) -> None:
    r = get(node, f"/o/{addr}")
    assert r.status_code == 400
    assert set(r.json()) >= {"code", "message", "retryable", "corr_id"}


def test_unknown_object_is_404(node: RunningNode) -> None:
    r = get(node, f"/o/b3:{'0' * 64}")
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_sane_corr_id_is_echoed_and_insane_one_replaced(node: RunningNode) -> None:
    assert get(node, f"/o/{ALPHA}", **{"X-Corr-Id": "abc-123"}).headers["x-corr-id"] == "abc-123"
    assert get(node, f"/o/{ALPHA}", **{"X-Corr-Id": "bad id!"}).headers["x-corr-id"] != "bad id!"


def test_put_over_cap_is_413(node: RunningNode) -> None:
    r = httpx.post(f"{node.http}/put", content=b"x" * (4 * 1024 * 1024 + 1), headers=node.auth)
    assert r.status_code == 413
    assert r.json()["code"] == "payload_too_large"


def test_unenforced_payment_is_announced_in_headers(node: RunningNode) -> None:
    addr = f"b3:{blake3.blake3(PAID_BODY).hexdigest()}.paid"
    r = get(node, f"/o/{addr}")
    assert r.status_code == 200 and r.content == PAID_BODY
    assert r.headers["x-payment-required"] == "true"
    assert r.headers["x-payment-currency"] == "USD"
    assert r.headers["x-payment-price-model"] == "per_request"
    assert r.headers["x-payment-price"] == "0.25"
    assert r.headers["x-payment-wallet"] == "w-1"


def test_enforced_payment_gets_402_after_a_config_reload(node: RunningNode) -> None:
    assert node.config_file is not None
    node.config_file.write_text(
        CONFIG.replace("enforce_payments = false", "enforce_payments = true")
    )
    assert httpx.post(f"{node.admin}/v1/config/reload").status_code == 200
    addr = f"b3:{blake3.blake3(PAID_BODY).hexdigest()}.paid"
    try:
        r = wait_until_sync(
            lambda: (resp := get(node, f"/o/{addr}")).status_code == 402 and resp, 10
        )
        body = r.json()
        assert body["code"] == "payment_required"
        assert (body["currency"], body["price_model"], body["price"], body["wallet"]) == (
            "USD",
            "per_request",
            0.25,
            "w-1",
        )
        for h in ("currency", "price-model", "price", "wallet"):
            assert r.headers[f"x-payment-{h}"]
    finally:
        node.config_file.write_text(CONFIG)
        httpx.post(f"{node.admin}/v1/config/reload")


def _bundle(node: RunningNode, hex_digest: str, tld: str) -> Path:
    return node.data_dir / "objects" / tld / hex_digest[:2] / f"{hex_digest}.{tld}"


def test_corrupted_zst_falls_back_to_identity_and_is_counted(
    node: RunningNode, tmp_path: Path
) -> None:
    body = b"zstd corruption test " * 50
    addr = httpx.post(
        f"{node.http}/put?tld=txt",
        content=body,
        headers={"Content-Type": "text/plain", **node.auth},
    ).json()["address"]
    hex_digest = addr[3:]
    zst = _bundle(node, hex_digest, "txt") / "payload.bin.zst"
    data = bytearray(zst.read_bytes())
    data[-1] ^= 0xFF
    zst.write_bytes(bytes(data))
    before = node.metric("encoding_fallbacks_total", coding="zstd")
    r = get(node, f"/o/{addr}", **{"Accept-Encoding": "zstd"})
    assert r.status_code == 200
    assert "content-encoding" not in r.headers
    assert r.content == body
    assert node.metric("encoding_fallbacks_total", coding="zstd") == before + 1


def test_corrupted_small_payload_is_never_served(node: RunningNode) -> None:
    body = os.urandom(1000)
    addr = httpx.post(f"{node.http}/put?tld=bin", content=body, headers=node.auth).json()["address"]
    payload = _bundle(node, addr[3:], "bin") / "payload.bin"
    data = bytearray(payload.read_bytes())
    data[10] ^= 0x01
    payload.write_bytes(bytes(data))
    before = node.metric("integrity_failures_total", kind="payload")
    r = get(node, f"/o/{addr}")
    assert r.status_code == 500
    assert r.json()["code"] == "internal"
    assert body[:100] not in r.content
    assert node.metric("integrity_failures_total", kind="payload") == before + 1
    # The bundle is quarantined: the next request no longer finds it.
    wait_until_sync(lambda: get(node, f"/o/{addr}").status_code == 404, 10, "quarantine")
    # ...and the audit log says so, naming the address.
    log = node.data_dir / "audit" / "audit.jsonl"

    def audited() -> bool:
        records = [json.loads(line) for line in log.read_text().splitlines()]
        return any(r["event"] == "quarantine" and r["data"]["address"] == addr for r in records)

    wait_until_sync(audited, 10, "the quarantine's audit record")


def test_corrupted_large_payload_is_never_delivered_complete(node: RunningNode) -> None:
    body = os.urandom(3 * 1024 * 1024)
    addr = httpx.post(f"{node.http}/put?tld=bin", content=body, headers=node.auth).json()["address"]
    payload = _bundle(node, addr[3:], "bin") / "payload.bin"
    with open(payload, "r+b") as f:  # flip one byte near the end, in place
        f.seek(len(body) - 100)
        byte = f.read(1)
        f.seek(len(body) - 100)
        f.write(bytes([byte[0] ^ 0x01]))
    before = node.metric("integrity_failures_total", kind="payload")
    received = b""
    with (
        pytest.raises(httpx.HTTPError),
        httpx.stream("GET", f"{node.http}/o/{addr}", timeout=30) as r,
    ):
        assert r.status_code in (200, 500)
        if r.status_code == 500:
            raise httpx.HTTPError("refused")
        for chunk in r.iter_bytes():
            received += chunk
    assert len(received) < len(body)
    assert node.metric("integrity_failures_total", kind="payload") == before + 1


def test_large_object_round_trips_and_range_reads_verify(node: RunningNode) -> None:
    body = os.urandom(2 * 1024 * 1024 + 17)
    addr = httpx.post(f"{node.http}/put", content=body, headers=node.auth).json()["address"]
    r = get(node, f"/o/{addr}")
    assert r.status_code == 200 and r.content == body
    r = get(node, f"/o/{addr}", Range="bytes=1048576-1048585")
    assert r.status_code == 206 and r.content == body[1048576:1048586]


def test_health_ready_and_metrics_on_the_gateway_address(node: RunningNode) -> None:
    assert get(node, "/healthz").status_code == 200
    ready = get(node, "/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    text = get(node, "/metrics").text
    # service="gateway" or "gateway-2"...: one label set per worker that served a GET.
    assert re.search(
        r'requests_total\{method="GET",route="/o/\{addr\}",service="gateway(-\d+)?",status="2xx"\}',
        text,
    )
    assert ALPHA_HEX not in text  # labels never carry addresses
