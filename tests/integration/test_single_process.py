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


def test_single_process_node_serves_the_mailbox(tmp_path: Path) -> None:
    """The mailbox in the same process as the gateway: send, receive, ack over HTTP."""
    with run_node(tmp_path, extra_args=["--single-process"]) as node:
        base = f"{node.http}/v1/mailbox"
        batch = {
            "messages": [{"payload_b64": "b25l"}, {"payload_b64": "dHdv", "headers": {"k": "v"}}]
        }
        sent = httpx.post(f"{base}/inbox/batch", json=batch, headers=node.auth)
        assert sent.status_code == 201
        ids = [m["msg_id"] for m in sent.json()["messages"]]
        got = httpx.post(f"{base}/inbox/receive", json={"max": 10}, headers=node.auth)
        assert got.status_code == 200
        messages = got.json()["messages"]
        assert [m["msg_id"] for m in messages] == ids
        assert [m["payload_b64"] for m in messages] == ["b25l", "dHdv"]
        assert [m["headers"] for m in messages] == [{}, {"k": "v"}]
        receipts = [m["receipt"] for m in messages]
        acked = httpx.post(f"{base}/ack", json={"receipts": receipts}, headers=node.auth)
        assert acked.status_code == 200 and acked.json() == {"acked": 2, "gone": 0}
        empty = httpx.post(f"{base}/inbox/receive", json={"max": 10}, headers=node.auth)
        assert empty.json() == {"messages": []}
        assert node.stop() == 0
