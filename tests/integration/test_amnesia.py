"""Amnesia mode: a node that serves a PUT, a GET and a mailbox round trip while nothing
in its data dir, its working directory or its temp dir is created or modified."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from support.node import run_node

Snapshot = dict[str, tuple[int, int, int]]


def snapshot(root: Path) -> Snapshot:
    """Every entry under ``root`` with its mode, size and mtime (absent root: empty)."""
    seen: Snapshot = {}
    if not root.exists():
        return seen
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            st = path.lstat()
            seen[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return seen


def test_amnesia_node_serves_and_leaves_no_trace(tmp_path: Path) -> None:
    cwd, tmp, data = tmp_path / "cwd", tmp_path / "tmp", tmp_path / "data"
    cwd.mkdir()
    tmp.mkdir()
    (cwd / "existing.txt").write_text("the user's own file")
    watched = {p: snapshot(p) for p in (cwd, tmp, data)}
    assert not data.exists()

    with run_node(tmp_path, extra_args=["--amnesia"], env={"TMPDIR": str(tmp)}, cwd=cwd) as node:
        status = node.status()["node"]
        assert status["amnesia"] is True
        ram = Path(status["data_dir"])
        assert str(ram).startswith("/dev/shm/")
        token = (ram / "auth" / "owner.token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        assert node.metric("amnesia_mode") == 1

        created = httpx.post(f"{node.http}/put", content=b"forget me", headers=auth, timeout=30)
        assert created.status_code == 201, created.text
        addr = created.json()["address"]
        got = httpx.get(f"{node.http}/o/{addr}", timeout=30)
        assert got.content == b"forget me"

        box = f"{node.http}/v1/mailbox/notes"
        sent = httpx.post(f"{box}/messages", content=b"note", headers=auth, timeout=30)
        assert sent.status_code == 201, sent.text
        leased = httpx.post(f"{box}/receive", json={}, headers=auth, timeout=30).json()
        receipt = leased["messages"][0]["receipt"]
        acked = httpx.post(
            f"{node.http}/v1/mailbox/ack", json={"receipts": [receipt]}, headers=auth, timeout=30
        )
        assert acked.json()["acked"] == 1

        for path, before in watched.items():
            assert snapshot(path) == before, f"{path} changed while the node ran"
        assert node.stop() == 0

    for path, before in watched.items():
        assert snapshot(path) == before, f"{path} changed"
    assert not ram.exists(), "the RAM directory must be wiped on exit"
