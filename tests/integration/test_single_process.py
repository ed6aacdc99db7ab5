"""``ron up --single-process``: the same services and behaviour inside one process."""

from __future__ import annotations

from pathlib import Path

import httpx

from support.node import run_node


def test_single_process_node_serves_put_and_get_and_stops_cleanly(tmp_path: Path) -> None:
    with run_node(tmp_path, extra_args=["--single-process"]) as node:
        status = node.status()
        assert status["node"]["single_process"] is True
        assert all(s["pid"] is None for s in status["services"])
        put = httpx.post(f"{node.http}/put", content=b"one process", headers=node.auth)
        assert put.status_code == 201
        got = httpx.get(f"{node.http}/o/{put.json()['address']}")
        assert got.status_code == 200 and got.content == b"one process"
        assert httpx.get(f"{node.admin}/readyz").status_code == 200
        assert "requests_total" in httpx.get(f"{node.admin}/metrics").text
        assert node.stop() == 0
