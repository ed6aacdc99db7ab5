"""The gateway's fast lane answers exactly as the ordinary path would, or not at all.

Against a node started with ``ron up``: plain GET/HEAD of a cached small object leaves
through the fast lane (counted in ``fast_lane_responses_total``), and its answer matches
the ordinary path's byte for byte but for the per-request headers; pipelined requests
are answered in order whichever path serves each; a payload corrupted after it was
cached is detected and counted; quota refusals still get the envelope.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.node import RunningNode, run_node
from support.rawhttp import hostport, read_response
from support.waiting import wait_until_sync

# Differ per request (or per second) by design; everything else must be identical.
PER_REQUEST = {b"date", b"x-corr-id", b"ratelimit"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    with run_node(tmp_path_factory.mktemp("fast")) as n:
        yield n


def put(node: RunningNode, body: bytes, mime: str = "application/octet-stream") -> str:
    reply = httpx.post(
        f"{node.http}/put", content=body, headers={"Content-Type": mime, **node.auth}
    )
    assert reply.status_code == 201, reply.text
    return str(reply.json()["address"])


def fast_count(node: RunningNode) -> float:
    return node.metric("fast_lane_responses_total")


def connect(node: RunningNode) -> socket.socket:
    return socket.create_connection(hostport(node.http), timeout=10)


def request(method: str, target: str, *extra: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: x", *extra, "", ""]
    return "\r\n".join(lines).encode()


def headers_of(head: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        out.append((name.strip().lower(), value.strip()))
    return out


def stable(head: bytes) -> list[tuple[bytes, bytes]]:
    """The head's headers in order, per-request values blanked."""
    return [(n, b"*" if n in PER_REQUEST else v) for n, v in headers_of(head)]


def warm(node: RunningNode, addr: str) -> None:
    """The first GET reads and verifies the payload (ordinary path) and caches it."""
    assert httpx.get(f"{node.http}/o/{addr}").status_code == 200


def warm_on(s: socket.socket, node: RunningNode, addr: str) -> None:
    """GET on this connection until the fast lane answers: each gateway worker keeps
    its own verified copies (a connection stays with the worker that accepted it), and
    a payload file written in the last second is not kept yet (file times are coarse)."""

    def fast_answer() -> bool:
        before = fast_count(node)
        s.sendall(request("GET", f"/o/{addr}"))
        assert read_response(s)[0] == 200
        return fast_count(node) > before

    wait_until_sync(fast_answer, 15, "the fast lane to answer on this connection")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_fast_answer_matches_the_ordinary_path(node: RunningNode, method: str) -> None:
    body = os.urandom(1024)
    addr = put(node, body)
    with connect(node) as s:
        warm_on(s, node, addr)
        before = fast_count(node)
        s.sendall(request(method, f"/o/{addr}", "X-Corr-Id: fast-1"))
        fast = read_response(s) if method == "GET" else _head_only(s)
        assert fast_count(node) == before + 1
        # If-None-Match with another tag changes nothing in the answer, but it is a
        # conditional request: the ordinary path serves it.
        s.sendall(request(method, f"/o/{addr}", "X-Corr-Id: slow-1", 'If-None-Match: "x"'))
        slow = read_response(s) if method == "GET" else _head_only(s)
        assert fast_count(node) == before + 1
    assert fast[0] == slow[0] == 200
    assert stable(fast[1]) == stable(slow[1])
    assert (b"x-corr-id", b"fast-1") in headers_of(fast[1])
    assert (b"content-length", b"1024") in headers_of(fast[1])
    assert fast[2] == slow[2] == (body if method == "GET" else b"")


def _head_only(s: socket.socket) -> tuple[int, bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, "closed before a whole response head"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert rest == b""  # HEAD: no body, whatever Content-Length says
    return int(head.split()[1]), head, b""


def test_pipelined_requests_are_answered_in_order(node: RunningNode) -> None:
    """Fast, ordinary (ranged), fast, 404, fast: in one write, answered in order."""
    body = os.urandom(2048)
    addr = put(node, body)
    warm(node, addr)
    missing = "b3:" + "0" * 64
    batch = b"".join(
        [
            request("GET", f"/o/{addr}"),
            request("GET", f"/o/{addr}", "Range: bytes=0-9"),
            request("GET", f"/o/{addr}"),
            request("GET", f"/o/{missing}"),
            request("GET", f"/o/{addr}"),
        ]
    )
    with connect(node) as s:
        s.sendall(batch)
        answers = _read_pipelined(s, 5)
    assert [a[0] for a in answers] == [200, 206, 200, 404, 200]
    assert answers[0][2] == answers[2][2] == answers[4][2] == body
    assert answers[1][2] == body[:10]
    assert b'"not_found"' in answers[3][2]


def _read_pipelined(s: socket.socket, n: int) -> list[tuple[int, bytes, bytes]]:
    """``n`` responses off one connection, keeping bytes that belong to the next."""
    buf = b""
    out = []
    while len(out) < n:
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            assert chunk, f"closed after {len(out)} responses"
            buf += chunk
        head, _, buf = buf.partition(b"\r\n\r\n")
        length = int(dict(headers_of(head)).get(b"content-length", b"0"))
        while len(buf) < length:
            chunk = s.recv(65536)
            assert chunk, "closed mid-body"
            buf += chunk
        out.append((int(head.split()[1]), head, buf[:length]))
        buf = buf[length:]
    return out


def test_many_fast_answers_on_one_kept_alive_connection(node: RunningNode) -> None:
    body = os.urandom(100)
    addr = put(node, body)
    with connect(node) as s:
        warm_on(s, node, addr)
        before_fast = fast_count(node)
        before_all = node.metric("requests_total", route="/o/{addr}", method="GET")
        for _ in range(200):
            s.sendall(request("GET", f"/o/{addr}"))
            status, _, got = read_response(s)
            assert (status, got) == (200, body)
    assert fast_count(node) == before_fast + 200
    # The golden metrics count fast answers like any other.
    assert node.metric("requests_total", route="/o/{addr}", method="GET") == before_all + 200


def test_only_plain_requests_take_the_fast_lane(node: RunningNode) -> None:
    addr = put(node, b"hello fast lane\n" * 10, mime="text/plain")
    warm(node, addr)
    plain = f"/o/{addr}"
    ordinary = [
        request("GET", plain, "Range: bytes=0-0"),
        request("GET", plain, 'If-None-Match: "x"'),
        request("GET", plain, "If-Range: x", "Range: bytes=0-0"),
        request("GET", plain, f"Authorization: Bearer {node.token}"),
        request("GET", plain + "?x=1"),
        request("GET", f"/o/{addr}/Manifest.toml"),
        request("GET", plain, "Connection: close"),
    ]
    for raw in ordinary:
        before = fast_count(node)
        with connect(node) as s:
            s.sendall(raw)
            status, _, _ = read_response(s)
        assert status in (200, 206), raw
        assert fast_count(node) == before, raw


def test_payload_corrupted_after_caching_is_detected(node: RunningNode) -> None:
    body = os.urandom(1000)
    addr = put(node, body)
    for _ in range(3):
        warm(node, addr)  # cached, then served from the cache
    payload = _payload(node, addr)
    data = bytearray(payload.read_bytes())
    data[10] ^= 0x01
    payload.write_bytes(bytes(data))
    before = node.metric("integrity_failures_total", kind="payload")
    # Until a worker's next look at the file (every 0.25 s) its fast lane may still
    # answer from memory: then only with the bytes that were verified, never the file's.
    answers: list[httpx.Response] = []

    def caught() -> bool:
        answers.append(httpx.get(f"{node.http}/o/{addr}"))
        return answers[-1].status_code == 500

    wait_until_sync(caught, 10, "the corruption to be caught")
    assert all(r.status_code == 200 and r.content == body for r in answers[:-1])
    assert body[:100] not in answers[-1].content
    assert node.metric("integrity_failures_total", kind="payload") == before + 1


def _payload(node: RunningNode, addr: str) -> Path:
    hex_digest = addr.removeprefix("b3:")
    matches = list((node.data_dir / "objects").rglob(f"{hex_digest}*/payload.bin"))
    assert len(matches) == 1, matches
    return matches[0]


def test_quota_refusal_in_the_fast_lane_gets_the_envelope(tmp_path: Path) -> None:
    config = "[gateway.quota]\nrps = 0.5\nburst = 4\n"
    with run_node(tmp_path, config=config) as n:
        addr = put(n, os.urandom(512))
        # Kept (and so served by the fast lane) only once its file is a second old.
        wait_until_sync(lambda: _age_s(_payload(n, addr)) > 1.1, 10, "the payload to settle")
        before = fast_count(n)
        codes = []
        with httpx.Client() as client:
            for _ in range(8):
                r = client.get(f"{n.http}/o/{addr}")
                codes.append(r.status_code)
                if r.status_code == 429:
                    refused = r
        assert codes.count(200) == 4 and codes.count(429) == 4, codes
        assert refused.json()["code"] == "quota_exhausted"
        assert int(refused.headers["retry-after"]) >= 1
        assert "ratelimit" in refused.headers
        # One connection, one worker: the first GET read and kept the payload, the
        # next three were the fast lane's, the refusals were declined to the ordinary path.
        assert fast_count(n) == before + 3


def _age_s(path: Path) -> float:
    st = path.stat()
    return time.time() - max(st.st_mtime, st.st_ctime)
