"""``ron put/get/pack/resolve/scrub`` as a user runs them."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import blake3
import httpx
import pytest

from support.node import RON, RunningNode, run_node


def beside(node: RunningNode) -> dict[str, str]:
    """The environment of a user working next to the node: ``ron`` finds its owner token."""
    return {"RON_DATA_DIR": str(node.data_dir)}


def ron(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [RON, *args], capture_output=True, timeout=120, env={**os.environ, **(env or {})}
    )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    tmp = tmp_path_factory.mktemp("cli")
    packed = tmp / "packed.txt"
    packed.write_bytes(b"packed before the node started\n")
    result = ron("pack", str(packed), "--tld", "txt", "--data-dir", str(tmp / "data"))
    assert result.returncode == 0, result.stderr
    (tmp / "packed.addr").write_bytes(result.stdout.strip())
    with run_node(tmp) as n:
        yield n


def test_put_prints_only_the_address_and_get_verifies(node: RunningNode, tmp_path: Path) -> None:
    src = tmp_path / "photo.bin"
    src.write_bytes(os.urandom(300_000))
    put = ron("put", str(src), "--tld", "bin", "--data-dir", str(node.data_dir))
    assert put.returncode == 0, put.stderr
    addr = put.stdout.decode().strip()
    assert addr == f"b3:{blake3.blake3(src.read_bytes()).hexdigest()}"
    out = tmp_path / "copy.bin"
    got = ron("get", addr, "-o", str(out), "--node", node.http)
    assert got.returncode == 0, got.stderr
    assert out.read_bytes() == src.read_bytes()
    to_stdout = ron("get", addr, "--node", node.http)
    assert to_stdout.stdout == src.read_bytes()


def test_put_records_license_and_parent(node: RunningNode, tmp_path: Path) -> None:
    parent = tmp_path / "parent.txt"
    parent.write_text("parent\n")
    parent_addr = (
        ron("put", str(parent), "--node", node.http, env=beside(node)).stdout.decode().strip()
    )
    child = tmp_path / "child.txt"
    child.write_text("child\n")
    child_addr = (
        ron(
            "put",
            str(child),
            "--license",
            "CC-BY-4.0",
            "--parent",
            parent_addr,
            "--node",
            node.http,
            env=beside(node),
        )
        .stdout.decode()
        .strip()
    )
    manifest = ron("resolve", child_addr, "--node", node.http)
    assert manifest.returncode == 0
    text = manifest.stdout.decode()
    assert 'license = "CC-BY-4.0"' in text
    assert parent_addr[3:] in text
    assert 'mime = "text/plain"' in text


def test_packed_bundle_is_served_by_the_node(node: RunningNode) -> None:
    addr = (node.data_dir.parent / "packed.addr").read_text()
    r = httpx.get(f"{node.http}/o/{addr}")
    assert r.status_code == 200 and r.content == b"packed before the node started\n"


def test_get_of_unknown_address_fails_cleanly(node: RunningNode, tmp_path: Path) -> None:
    out = tmp_path / "nothing"
    result = ron("get", f"b3:{'1' * 64}", "-o", str(out), "--node", node.http)
    assert result.returncode == 1
    assert b"not_found" in result.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".ron-get-*"))


def test_scrub_finds_and_quarantines_corruption(node: RunningNode, tmp_path: Path) -> None:
    src = tmp_path / "victim.bin"
    src.write_bytes(os.urandom(5000))
    addr = ron("put", str(src), "--node", node.http, env=beside(node)).stdout.decode().strip()
    hex_digest = addr[3:]
    payload = (
        node.data_dir / "objects" / "bin" / hex_digest[:2] / f"{hex_digest}.bin" / "payload.bin"
    )
    data = bytearray(payload.read_bytes())
    data[0] ^= 0xFF
    payload.write_bytes(bytes(data))
    result = ron("scrub", "--data-dir", str(node.data_dir))
    assert result.returncode == 1
    assert addr.encode() in result.stderr
    assert not payload.exists()
    assert any((node.data_dir / "quarantine").iterdir())
    assert httpx.get(f"{node.http}/o/{addr}").status_code == 404
