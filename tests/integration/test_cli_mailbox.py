"""``ron mailbox send|recv|ack|tail|stats`` as a user runs them, against ``ron up``."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.node import RON, RunningNode, run_node


def ron(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [RON, *args], input=stdin, capture_output=True, timeout=120, env=dict(os.environ)
    )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    with run_node(tmp_path_factory.mktemp("cli-mailbox")) as n:
        yield n


def test_send_recv_ack_stats(node: RunningNode, tmp_path: Path) -> None:
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(2000))
    sent = ron(
        "mailbox",
        "send",
        "jobs",
        "-f",
        str(src),
        "-H",
        "kind=blob",
        "--node",
        node.http,
        "--data-dir",
        str(node.data_dir),
    )
    assert sent.returncode == 0, sent.stderr
    msg_id = sent.stdout.decode().strip()
    piped = ron(
        "mailbox",
        "send",
        "jobs",
        "--node",
        node.http,
        "--data-dir",
        str(node.data_dir),
        stdin=b"from stdin",
    )
    assert piped.returncode == 0, piped.stderr
    # The data dir is enough to find the node (node.json), as for content commands.
    stats = ron("mailbox", "stats", "jobs", "--json", "--data-dir", str(node.data_dir))
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["depth"] == 2

    got = ron(
        "mailbox",
        "recv",
        "jobs",
        "--max",
        "10",
        "--node",
        node.http,
        "--data-dir",
        str(node.data_dir),
    )
    assert got.returncode == 0, got.stderr
    lines = [json.loads(line) for line in got.stdout.decode().splitlines()]
    assert lines[0]["msg_id"] == msg_id
    assert base64.b64decode(lines[0]["payload_b64"]) == src.read_bytes()
    assert lines[0]["headers"] == {"kind": "blob"}
    assert base64.b64decode(lines[1]["payload_b64"]) == b"from stdin"

    acked = ron(
        "mailbox",
        "ack",
        *(m["receipt"] for m in lines),
        "--node",
        node.http,
        "--data-dir",
        str(node.data_dir),
    )
    assert acked.returncode == 0, acked.stderr
    assert acked.stdout.decode().strip() == "acked 2"
    empty = ron("mailbox", "recv", "jobs", "--node", node.http, "--data-dir", str(node.data_dir))
    assert empty.returncode == 1 and empty.stdout == b""


def test_recv_raw_and_ack(node: RunningNode) -> None:
    httpx.post(f"{node.http}/v1/mailbox/raw/messages", content=b"plain text", headers=node.auth)
    got = ron(
        "mailbox",
        "recv",
        "raw",
        "--raw",
        "--ack",
        "--node",
        node.http,
        "--data-dir",
        str(node.data_dir),
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout == b"plain text"
    stats = httpx.get(f"{node.http}/v1/mailbox/raw/stats", headers=node.auth).json()
    assert (stats["depth"], stats["in_flight"]) == (0, 0)


def test_tail_prints_and_acks(node: RunningNode) -> None:
    for i in range(3):
        httpx.post(f"{node.http}/v1/mailbox/tailed/messages", content=b"m%d" % i, headers=node.auth)
    tailed = ron(
        "mailbox",
        "tail",
        "tailed",
        "--count",
        "3",
        "--node",
        node.http,
        "--data-dir",
        str(node.data_dir),
    )
    assert tailed.returncode == 0, tailed.stderr
    payloads = [
        base64.b64decode(json.loads(line)["payload_b64"])
        for line in tailed.stdout.decode().splitlines()
    ]
    assert payloads == [b"m0", b"m1", b"m2"]
    stats = httpx.get(f"{node.http}/v1/mailbox/tailed/stats", headers=node.auth).json()
    assert (stats["depth"], stats["in_flight"]) == (0, 0)


def test_errors_are_reported_from_the_envelope(node: RunningNode) -> None:
    bad = ron(
        "mailbox", "ack", "not-a-receipt", "--node", node.http, "--data-dir", str(node.data_dir)
    )
    assert bad.returncode == 1
    assert b"bad_request" in bad.stderr
    bad_topic = ron(
        "mailbox", "stats", "no spaces", "--node", node.http, "--data-dir", str(node.data_dir)
    )
    assert bad_topic.returncode == 1
    assert b"topic" in bad_topic.stderr
