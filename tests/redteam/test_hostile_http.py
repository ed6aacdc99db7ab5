"""Hostile HTTP clients against a running node's gateway (docs/GATEWAY.md,
docs/specs/HTTP-CONTENT.md, docs/specs/HTTP-API.md).

Every case checks the exact status and error-envelope ``code`` (tables are compared
whole, so a failure shows every row that differs); then ``node_survives`` checks that
no request stayed in flight, that no temporary file was left behind, that the same
gateway process still serves the reference object byte for byte, that the node is
ready and that the gateway's memory stayed within a fixed bound.

Requests go out through the well-behaved tenant (``GOOD_KEY``) with the owner's
credentials, so that quotas and capability checks never mask the rule under test; raw
sockets are used wherever a client library would fix up what an attacker sends.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import json
import os
import select
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import brotli
import httpx
import pytest
import zstandard

from support.node import RunningNode
from support.procmem import vm_kib
from support.rawhttp import exchange, hostport, read_response, split_response
from support.redteam import (
    GOOD_KEY,
    HEADER_TIMEOUT_S,
    MAX_PUT,
    MEMORY_BOUND_KIB,
    OBJECT,
    READ_IDLE_S,
    good_auth,
)
from support.waiting import wait_until_sync

SENTINEL = b"red-team sentinel: never served"


def good(node: RunningNode) -> dict[str, str]:
    """Headers of the well-behaved tenant, with the owner's credentials."""
    return {"X-Api-Key": GOOD_KEY, **good_auth(node)}


def good_lines(node: RunningNode) -> bytes:
    """:func:`good` as raw header lines."""
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in good(node).items())


def envelope_code(head: bytes, body: bytes) -> str | None:
    """The envelope's ``code``, after checking it is the envelope (JSON, with the
    ``X-Corr-Id`` header naming the same corr_id); None when the body is not JSON."""
    try:
        env = json.loads(body)
    except ValueError:
        return None
    assert set(env) >= {"code", "message", "retryable", "corr_id"}, env
    assert b"content-type: application/json" in head.lower()
    assert f"x-corr-id: {env['corr_id']}".encode() in head.lower()
    code: str = env["code"]
    return code


def outcome(data: bytes) -> tuple[int, str | None]:
    status, head, body = split_response(data)
    return status, envelope_code(head, body)


def temp_files(node: RunningNode) -> list[Path]:
    return list((node.data_dir / "tmp").iterdir())


def stored(node: RunningNode) -> set[Path]:
    return set((node.data_dir / "objects").rglob("*"))


def rejected(node: RunningNode, reason: str) -> float:
    return node.metric("rejected_total", service="gateway*", reason=reason)


@pytest.fixture(scope="module")
def pids(node: RunningNode) -> dict[str, int]:
    """Every gateway worker's pid: an attack may land on any of them."""
    return {name: node.service_pid(name) for name in node.gateway_workers()}


@pytest.fixture(autouse=True)
def node_survives(node: RunningNode, addr: str, pids: dict[str, int]) -> Iterator[None]:
    """After each attack: nothing in flight, no temp file, same process still serving the
    reference object, node ready, memory bounded."""
    rss = {name: vm_kib(pid) for name, pid in pids.items()}
    yield
    wait_until_sync(
        lambda: node.metric("inflight", service="gateway*") == 0, 10, "no request in flight"
    )
    wait_until_sync(lambda: not temp_files(node), 10, "no temp file left")
    reply = httpx.get(f"{node.http}/o/{addr}", headers=good(node), timeout=10)
    assert reply.status_code == 200 and reply.content == OBJECT
    assert httpx.get(f"{node.admin}/readyz", timeout=10).status_code == 200
    for name, pid in pids.items():
        assert node.service_pid(name) == pid
        grown = vm_kib(pid) - rss[name]
        assert grown < MEMORY_BOUND_KIB, f"{name} RSS grew by {grown} KiB"


def served_meanwhile(node: RunningNode, addr: str) -> None:
    reply = httpx.get(f"{node.http}/o/{addr}", headers=good(node), timeout=10)
    assert reply.status_code == 200 and reply.content == OBJECT


# --- slow clients ---------------------------------------------------------------------------


def test_slowloris_on_headers_is_cut_at_the_deadline_though_bytes_keep_coming(
    node: RunningNode, addr: str
) -> None:
    """Twenty clients trickle header bytes (a byte each per 0.1 s, never the blank line):
    each gets 408 ``timeout`` at the header deadline counted from its first byte, not
    from its last, and is closed; another client is served meanwhile."""
    before = rejected(node, "header_timeout")
    socks = [socket.create_connection(hostport(node.http), timeout=10) for _ in range(20)]
    answers: dict[socket.socket, bytes] = {}
    started = time.monotonic()
    try:
        for s in socks:
            s.sendall(f"GET /o/{addr} HTTP/1.1\r\nHost: x\r\n".encode())
        served_meanwhile(node, addr)
        trickle = itertools.cycle(b"X-Trickle: a\r\n")
        while len(answers) < len(socks) and time.monotonic() - started < 15:
            waiting = [s for s in socks if s not in answers]
            byte = bytes([next(trickle)])
            for s in waiting:
                with contextlib.suppress(OSError):  # already cut: its answer waits to be read
                    s.send(byte)
            readable, _, _ = select.select(waiting, [], [], 0.1)  # also the trickle's pace
            for s in readable:
                answers[s] = exchange_rest(s)
        elapsed = time.monotonic() - started
    finally:
        for s in socks:
            s.close()
    assert len(answers) == len(socks)
    assert {outcome(a) for a in answers.values()} == {(408, "timeout")}
    assert all(b"connection: close" in a.lower() for a in answers.values())
    assert elapsed < HEADER_TIMEOUT_S + 5
    assert rejected(node, "header_timeout") == before + len(socks)


def exchange_rest(s: socket.socket) -> bytes:
    """Everything left to read on ``s`` until the server closes it."""
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_slowloris_on_bodies_is_cut_at_the_read_idle_deadline(node: RunningNode, addr: str) -> None:
    """Ten uploads that stall after a few bytes: 408 ``timeout`` once the body has been
    idle for ``read_idle_timeout_s``; nothing is stored, no temp file stays."""
    before_rejected = rejected(node, "read_timeout")
    before_stored = stored(node)
    socks = [socket.create_connection(hostport(node.http), timeout=10) for _ in range(10)]
    started = time.monotonic()
    try:
        for s in socks:
            s.sendall(
                b"POST /put HTTP/1.1\r\nHost: x\r\n"
                + good_lines(node)
                + b"Content-Length: 100000\r\n\r\nonly a little"
            )
        served_meanwhile(node, addr)
        replies = [read_response(s) for s in socks]
        elapsed = time.monotonic() - started
    finally:
        for s in socks:
            s.close()
    assert {(status, envelope_code(head, body)) for status, head, body in replies} == {
        (408, "timeout")
    }
    assert READ_IDLE_S * 0.8 <= elapsed < READ_IDLE_S + 5
    assert rejected(node, "read_timeout") == before_rejected + len(socks)
    assert stored(node) == before_stored


def test_clients_that_vanish_mid_put_leave_nothing_half_stored(node: RunningNode) -> None:
    """Uploads cut by the client (FIN or RST, declared length or chunked, identity or
    zstd): no object for the whole body nor for the part sent, no temp file, no
    request left in flight (``node_survives``)."""
    before = stored(node)
    bodies: list[bytes] = []

    def upload(cut: str, framing: str, coding: str) -> None:
        body = os.urandom(256 * 1024)
        bodies.append(body)
        wire = zstandard.ZstdCompressor(level=1).compress(body) if coding == "zstd" else body
        half = wire[: len(wire) // 2]
        if coding == "identity":
            bodies.append(half)  # what a store that kept the part received would hold
        head = b"POST /put HTTP/1.1\r\nHost: x\r\n" + good_lines(node)
        if coding == "zstd":
            head += b"Content-Encoding: zstd\r\n"
        if framing == "length":
            sent = head + b"Content-Length: %d\r\n\r\n" % len(wire) + half
        else:
            sent = head + b"Transfer-Encoding: chunked\r\n\r\n"
            sent += b"".join(
                b"%x\r\n%s\r\n" % (len(half[i : i + 65536]), half[i : i + 65536])
                for i in range(0, len(half), 65536)
            )
        s = socket.create_connection(hostport(node.http), timeout=10)
        s.sendall(sent)
        if cut == "rst":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

    for cut, framing, coding in itertools.product(
        ("fin", "rst"), ("length", "chunked"), ("identity", "zstd")
    ):
        upload(cut, framing, coding)
    wait_until_sync(
        lambda: node.metric("inflight", service="gateway*") == 0, 10, "the uploads to end"
    )
    wait_until_sync(lambda: not temp_files(node), 10, "no temp file left")
    assert stored(node) == before
    for body in bodies:
        address = f"b3:{blake3.blake3(body).hexdigest()}"
        reply = httpx.get(f"{node.http}/o/{address}", headers=good(node), timeout=10)
        assert reply.status_code == 404 and reply.json()["code"] == "not_found"


# --- header floods --------------------------------------------------------------------------


def test_header_floods_are_431_and_headers_within_the_limit_are_served(
    node: RunningNode, addr: str
) -> None:
    """One 100 KiB header, and 20,000 small ones: 431 ``headers_too_large`` and a close,
    counted as the bytes arrive. 3,000 small headers (under 64 KiB) are just a request."""
    before = rejected(node, "headers_too_large")
    start = f"GET /o/{addr} HTTP/1.1\r\nHost: x\r\n".encode() + good_lines(node)
    big = start + b"X-Big: " + b"a" * (100 * 1024) + b"\r\n\r\n"
    many = start + b"".join(b"X-H%05d: v\r\n" % i for i in range(20_000)) + b"\r\n"
    for request in (big, many):
        data = exchange(node.http, request)
        assert outcome(data) == (431, "headers_too_large")
        assert b"connection: close" in data.lower()
    assert rejected(node, "headers_too_large") == before + 2
    fine = start + b"".join(b"X-H%05d: v\r\n" % i for i in range(3_000))
    status, _, body = split_response(exchange(node.http, fine + b"Connection: close\r\n\r\n"))
    assert (status, body) == (200, OBJECT)


# --- paths and addresses -------------------------------------------------------------------


def test_path_traversal_never_leaves_the_bundle(node: RunningNode, addr: str) -> None:
    """Dot segments (plain, percent-encoded, double-encoded), absolute paths, backslashes
    and NUL bytes, in ``rel`` and in the address: 400 or 404 per HTTP-CONTENT.md, and no
    response ever carries a byte of a file outside the bundle."""
    (node.data_dir / "secret.txt").write_bytes(SENTINEL)
    up = "../../../../secret.txt"  # objects/<tld>/<xx>/<bundle>/ -> data_dir
    bad, missing = (400, "bad_request"), (404, "not_found")
    want = {
        f"/o/{addr}/{up}": bad,
        f"/o/{addr}/{up.replace('.', '%2e')}": bad,
        f"/o/{addr}/{up.replace('/', '%2f')}": bad,
        f"/o/{addr}/{up.replace('.', '%2E').replace('/', '%2F')}": bad,
        f"/o/{addr}/..%252f..%252f..%252f..%252fsecret.txt": missing,  # one level decoded
        f"/o/{addr}/..%5c..%5c..%5c..%5csecret.txt": bad,
        f"/o/{addr}/..\\..\\secret.txt": bad,
        f"/o/{addr}//etc/passwd": bad,
        f"/o/{addr}/%2fetc%2fpasswd": bad,
        f"/o/{addr}/payload.bin%00": bad,
        f"/o/{addr}/Manifest.toml%00.png": bad,
        f"/o/{addr}/%00": bad,
        f"/o/{addr}/.": bad,
        f"/o/{addr}/./payload.bin": bad,
        f"/o/{addr}/./Manifest.toml": bad,
        f"/o/{addr}/Manifest.toml/": bad,
        f"/o/{addr}/Manifest.toml/..": bad,
        f"/o/{addr}/secret.txt": missing,
        "/o/../../../secret.txt": bad,
        "/o/%2e%2e/%2e%2e/%2e%2e/secret.txt": bad,
        "/o/..%2f..%2f..%2fsecret.txt": bad,
        "/o//etc/passwd": bad,
        "/o/%2fetc%2fpasswd": bad,
        f"/o/{addr}%00": bad,
        f"/o/{addr}%00/Manifest.toml": bad,
        f"/o/{addr}.%2e%2e/secret.txt": bad,
        f"/o/{addr}.txt%2f..%2f..%2fsecret.txt": bad,
        "/o/%00": bad,
    }
    got = {}
    for target, _ in want.items():
        request = f"GET {target} HTTP/1.1\r\nHost: x\r\n".encode() + good_lines(node)
        data = exchange(node.http, request + b"Connection: close\r\n\r\n")
        assert SENTINEL not in data and b"root:" not in data, target
        got[target] = outcome(data)
    assert got == want


def test_malformed_addresses_are_400(node: RunningNode) -> None:
    hex64 = "0" * 64
    want = {
        f"/o/{a}": (400, "bad_request")
        for a in [
            "zz",
            "b3:",
            "b3:" + hex64[:63],
            "b3:" + hex64 + "0",
            "b3:" + "g" * 64,
            "sha256:" + hex64,
            "blake3:",
            "b4:" + hex64,
            "b3:" + hex64 + ".",
            "b3:" + hex64 + ".-x",
            "b3:" + hex64 + "." + "a" * 33,
            "b3:" + hex64 + ".%E2%84%AA",  # KELVIN SIGN, lowercases to "k"
            "b3:%20" + hex64,
            "b3:" + "a" * 10_000,
            "%ff%fe",
        ]
    }
    want[f"/o/b3:{hex64}"] = (404, "not_found")  # well formed, just not here
    want[f"/o/{hex64.upper()}.txt"] = (404, "not_found")
    got = {}
    for target in want:
        request = f"GET {target} HTTP/1.1\r\nHost: x\r\n".encode() + good_lines(node)
        got[target] = outcome(exchange(node.http, request + b"Connection: close\r\n\r\n"))
    assert got == want


def raw(
    node: RunningNode, line: bytes, *headers: bytes, body: bytes = b"", auth: bool = True
) -> bytes:
    """One request exactly as given (``Connection: close``, the good tenant's headers
    unless ``auth`` is false, ``Content-Length`` unless the framing is given), and the
    whole answer."""
    request = line + b"\r\nHost: x\r\nConnection: close\r\n" + (good_lines(node) if auth else b"")
    framed = any(h.lower().startswith((b"content-length:", b"transfer-encoding:")) for h in headers)
    if body and not framed:
        headers = (*headers, b"Content-Length: %d" % len(body))
    request += b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
    return exchange(node.http, request)


def test_invalid_utf8_and_unparsable_requests_get_the_envelope(
    node: RunningNode, addr: str
) -> None:
    """Raw non-UTF-8 bytes in paths, headers and JSON, and requests the HTTP parser
    refuses: 400 (401 for a key that names no tenant) with the error envelope, never a
    bare text answer, a 500 or a crash."""
    receive = b"POST /v1/mailbox/redteam/receive HTTP/1.1"
    put = b"POST /put HTTP/1.1"
    get = f"GET /o/{addr} HTTP/1.1".encode()
    bad = (400, "bad_request")
    cases: dict[str, tuple[bytes, tuple[int, str]]] = {
        "raw bytes in an address": (raw(node, b"GET /o/\xff\xfe HTTP/1.1"), bad),
        "NUL in the request line": (raw(node, b"GET /o/\x00 HTTP/1.1"), bad),
        "raw bytes in a topic": (
            raw(
                node,
                b"POST /v1/mailbox/t\xc3\x28/messages HTTP/1.1",
                body=b"hi",
            ),
            bad,
        ),
        "encoded bytes in a topic": (
            raw(node, b"POST /v1/mailbox/t%ff/messages HTTP/1.1", body=b"hi"),
            bad,
        ),
        "raw bytes in a message header": (
            raw(
                node,
                b"POST /v1/mailbox/redteam/messages HTTP/1.1",
                b"X-Ron-Header-Kind: \xff\xfe",
                body=b"hi",
            ),
            bad,
        ),
        "raw bytes in an api key": (
            raw(node, get, b"X-Api-Key: \xff\xfe\xc3\x28-not-a-tenant-key", auth=False),
            (401, "unauthorized"),
        ),
        "raw bytes in a content type": (
            raw(node, put, b"Content-Type: \xff\xfe/\xc3\x28", body=b"hi"),
            bad,
        ),
        "invalid UTF-8 in JSON": (
            raw(node, receive, body=b'{"max": "\xff\xfe"}'),
            bad,
        ),
        "a lone surrogate in JSON": (
            raw(node, receive, body=b'{"max": "\\ud800"}'),
            bad,
        ),
        "negative Content-Length": (raw(node, put, b"Content-Length: -1", body=b"hi"), bad),
        "Content-Length beyond 2**64": (
            raw(node, put, b"Content-Length: 99999999999999999999999", body=b"hi"),
            bad,
        ),
        "Content-Length and Transfer-Encoding": (
            raw(
                node,
                put,
                b"Content-Length: 2",
                b"Transfer-Encoding: chunked",
                body=b"2\r\nhi\r\n0\r\n\r\n",
            ),
            bad,
        ),
        "chunk size beyond 2**64": (
            raw(
                node,
                put,
                b"Transfer-Encoding: chunked",
                body=b"ffffffffffffffffffffff\r\nhi\r\n0\r\n\r\n",
            ),
            bad,
        ),
    }
    got = {name: outcome(data) for name, (data, _) in cases.items()}
    assert got == {name: expected for name, (_, expected) in cases.items()}
    # A corr id that is not sane is replaced, never echoed.
    status, head, body = split_response(raw(node, get, b"X-Corr-Id: \xff\xfe"))
    assert (status, body) == (200, OBJECT)
    [corr] = [line for line in head.split(b"\r\n") if line.lower().startswith(b"x-corr-id:")]
    assert corr.split(b":", 1)[1].strip().isalnum()


# --- Range abuse (HTTP-CONTENT.md) --------------------------------------------------------


def test_range_abuse_is_416_or_ignored_per_the_spec(node: RunningNode, addr: str) -> None:
    size = len(OBJECT)
    unsatisfiable = (416, f"bytes */{size}".encode(), None)
    full = (200, None, OBJECT)
    want: dict[bytes, tuple[int, bytes | None, bytes | None]] = {
        b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(5000)): unsatisfiable,
        b"bytes=0-0,0-0,0-0": unsatisfiable,
        b"bytes=0-1,5-9": unsatisfiable,
        b"bytes=-1-2": unsatisfiable,
        b"bytes=--5": unsatisfiable,
        b"bytes=-0": unsatisfiable,
        b"bytes=5-1": unsatisfiable,
        b"bytes=-": unsatisfiable,
        b"bytes=": unsatisfiable,
        b"bytes=0x10-20": unsatisfiable,
        b"bytes=1e3-": unsatisfiable,
        b"bytes=+1-2": unsatisfiable,
        b"bytes=\xd9\xa1-\xd9\xa2": unsatisfiable,  # Arabic-Indic digits
        b"bytes=18446744073709551616-": unsatisfiable,  # 2**64
        b"bytes=0-18446744073709551616": unsatisfiable,
        b"bytes=-18446744073709551616": unsatisfiable,
        b"bytes=" + b"9" * 1000 + b"-": unsatisfiable,
        b"bytes=%d-" % size: unsatisfiable,
        b"bytes=999999999999999999-": unsatisfiable,
        b"bytes=0-999999999999999999": (206, b"bytes 0-%d/%d" % (size - 1, size), OBJECT),
        b"bytes=-999999999999999999": (206, b"bytes 0-%d/%d" % (size - 1, size), OBJECT),
        b"bytes=1-2,": (206, b"bytes 1-2/%d" % size, OBJECT[1:3]),
        b"items=0-1": full,
        b"bytes 0-1": full,
        b"": full,
    }
    got = {}
    for spec in want:
        request = (
            f"GET /o/{addr} HTTP/1.1\r\nHost: x\r\n".encode()
            + good_lines(node)
            + b"Accept-Encoding: identity\r\nRange: "
            + spec
            + b"\r\nConnection: close\r\n\r\n"
        )
        status, head, body = split_response(exchange(node.http, request))
        ranges = [
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-range:")
        ]
        if status == 416:
            assert envelope_code(head, body) == "range_not_satisfiable"
            body_seen = None
        else:
            body_seen = body
        got[spec] = (status, ranges[0] if ranges else None, body_seen)
    assert got == want


# --- compressed bodies (GATEWAY.md) -------------------------------------------------------


def _four_letters(n: int) -> bytes:
    """Text that compresses about 4:1 with any coding: inside the ratio rail."""
    return os.urandom(n).translate(bytes(b"acgt"[i % 4] for i in range(256)))


def _chunks(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), 65536):
        yield data[i : i + 65536]


ENCODERS = {
    "zstd": lambda data: zstandard.ZstdCompressor(level=3).compress(data),
    "gzip": lambda data: gzip.compress(data, compresslevel=6),
    "br": lambda data: brotli.compress(data, quality=5),
}


def test_compression_bombs_are_413_under_both_rails_for_every_coding(
    node: RunningNode,
) -> None:
    """Per coding: a ratio bomb (900 KiB of zeros: under the size cap, so only the 10:1
    rail can stop it), a body within the ratio that decodes past the 1 MiB cap (the
    size rail), malformed and truncated bodies (400). Each stops while streaming
    (memory: ``node_survives``), is counted under its reason, and nothing is stored."""
    before_stored = stored(node)
    before = {reason: rejected(node, reason) for reason in ("ratio_cap", "decompress_cap")}
    zeros = bytes(900 * 1024)
    text = _four_letters(MAX_PUT + MAX_PUT // 4)
    got: dict[tuple[str, str], tuple[int, str]] = {}
    want: dict[tuple[str, str], tuple[int, str]] = {}
    for coding, encode in ENCODERS.items():
        ratio_bomb, size_bomb = encode(zeros), encode(text)
        assert len(text) <= 10 * len(size_bomb)
        small = encode(_four_letters(64 * 1024))
        cases: dict[str, tuple[bytes | Iterator[bytes], int, str]] = {
            "ratio bomb": (ratio_bomb, 413, "payload_too_large"),
            # Sent chunked: no Content-Length for the declared-size check to refuse first.
            "size bomb": (_chunks(size_bomb), 413, "payload_too_large"),
            "malformed": (b"\x28\xb5\x2f\xfd" + bytes(64) + os.urandom(64), 400, "bad_request"),
            "truncated": (small[:-16], 400, "bad_request"),
        }
        for name, (content, status, code) in cases.items():
            headers = {**good(node), "Content-Encoding": coding}
            reply = httpx.post(f"{node.http}/put", content=content, headers=headers, timeout=60)
            got[(coding, name)] = (reply.status_code, reply.json()["code"])
            want[(coding, name)] = (status, code)
    assert got == want
    assert rejected(node, "ratio_cap") == before["ratio_cap"] + len(ENCODERS)
    assert rejected(node, "decompress_cap") == before["decompress_cap"] + len(ENCODERS)
    assert stored(node) == before_stored


# --- mailbox JSON (HTTP-API.md) -------------------------------------------------------------


def test_hostile_json_on_mailbox_routes_is_400_or_413_never_a_crash(node: RunningNode) -> None:
    """Bodies are bounded before they are parsed (413) and parsed strictly (400): 100k
    nested arrays are refused by size on a control route and by depth on the batch route
    (whose limit is larger), without a recursion crash in any process."""
    mailbox_pid = node.service_pid("mailbox")
    too_large, bad = (413, "payload_too_large"), (400, "bad_request")
    arrays = b"[" * 100_000 + b"]" * 100_000
    objects = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    cases: dict[tuple[str, str], tuple[bytes, tuple[int, str]]] = {
        ("redteam/receive", "100k nested arrays"): (arrays, too_large),
        ("redteam/batch", "100k nested arrays"): (arrays, bad),
        ("redteam/batch", "100k nested objects"): (objects, bad),
        ("ack", "30k nested arrays"): (b"[" * 30_000 + b"]" * 30_000, bad),
        ("nack", "10k nested objects"): (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, bad),
        ("redteam/batch", "over the batch limit"): (b'["' + b"a" * (2 << 20) + b'"]', too_large),
        ("redteam/receive", "a 5000-digit number"): (b'{"max": ' + b"9" * 5000 + b"}", bad),
        ("redteam/receive", "NaN"): (b'{"max": NaN}', bad),
        ("redteam/receive", "Infinity"): (b'{"wait_s": Infinity}', bad),
        ("redteam/receive", "duplicate keys"): (b'{"max": 1, "max": 2}', bad),
        ("redteam/receive", "not an object"): (b"[1]", bad),
        ("redteam/receive", "true as an integer"): (b'{"max": true}', bad),
        ("extend", "unknown key"): (b'{"receipts": ["x"], "visibility_s": 1, "x": 1}', bad),
        ("redteam/messages", "payload over 1 MiB"): (b"x" * ((1 << 20) + 1), too_large),
    }
    bodies = {key: body for key, (body, _) in cases.items()}
    want = {key: expected for key, (_, expected) in cases.items()}
    got = {}
    for (route, name), body in bodies.items():
        reply = httpx.post(
            f"{node.http}/v1/mailbox/{route}", content=body, headers=good(node), timeout=30
        )
        got[(route, name)] = (reply.status_code, reply.json()["code"])
    assert got == want
    assert node.service_pid("mailbox") == mailbox_pid
