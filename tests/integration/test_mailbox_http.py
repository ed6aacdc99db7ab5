"""The mailbox through a real node (``ron up``): every rule of /v1/mailbox over HTTP.

Each test uses its own topic on one shared node. Waiting is on conditions: a long-poll
is known to be waiting when the node's ``mailbox_waiters`` gauge says so, and leases
are made short so that their expiry is what a long-poll waits for.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from support.node import RunningNode, run_node
from support.waiting import wait_until_sync

CONFIG = """
[mailbox]
max_deliveries = 3
dedup_window_s = 1

[mailbox.max_deliveries_by_topic]
poison = 2
"""
ENV = {"RON_GATEWAY__QUOTA__ENABLED": "false"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    with run_node(tmp_path_factory.mktemp("mailbox"), config=CONFIG, env=ENV) as n:
        yield n


@pytest.fixture(scope="module")
def http(node: RunningNode) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=node.http, timeout=30, headers=node.auth) as client:
        yield client


def send(http: httpx.Client, topic: str, payload: bytes, **headers: str) -> str:
    reply = http.post(f"/v1/mailbox/{topic}/messages", content=payload, headers=headers)
    assert reply.status_code == 201, reply.text
    return str(reply.json()["msg_id"])


def receive(http: httpx.Client, topic: str, **body: Any) -> list[dict[str, Any]]:
    reply = http.post(f"/v1/mailbox/{topic}/receive", json=body)
    assert reply.status_code == 200, reply.text
    messages: list[dict[str, Any]] = reply.json()["messages"]
    return messages


def ack(http: httpx.Client, *receipts: str) -> httpx.Response:
    return http.post("/v1/mailbox/ack", json={"receipts": list(receipts)})


def stats(http: httpx.Client, topic: str) -> dict[str, Any]:
    reply = http.get(f"/v1/mailbox/{topic}/stats")
    assert reply.status_code == 200, reply.text
    data: dict[str, Any] = reply.json()
    return data


def payload(message: dict[str, Any]) -> bytes:
    return base64.b64decode(message["payload_b64"])


def wait_for_waiters(node: RunningNode, n: int = 1) -> None:
    wait_until_sync(lambda: node.metric("mailbox_waiters") >= n, 10, "a waiting receiver")


# ---- the basic cycle ----------------------------------------------------------------


def test_send_receive_ack(http: httpx.Client) -> None:
    body = bytes(range(256)) * 4
    msg_id = send(http, "basic", body, **{"X-Ron-Header-Kind": "greeting", "X-Ron-Header-N": "1"})
    (m,) = receive(http, "basic", max=10)
    assert m["msg_id"] == msg_id
    assert payload(m) == body
    assert m["headers"] == {"kind": "greeting", "n": "1"}
    assert m["delivery_count"] == 1
    assert m["receipt"].startswith(msg_id + ".")
    s = stats(http, "basic")
    assert (s["depth"], s["in_flight"], s["dlq_depth"]) == (0, 1, 0)
    reply = ack(http, m["receipt"])
    assert reply.status_code == 200
    assert reply.json() == {"acked": 1, "gone": 0}
    assert ack(http, m["receipt"]).json() == {"acked": 0, "gone": 1}
    s = stats(http, "basic")
    assert (s["depth"], s["in_flight"]) == (0, 0)


def test_fifo_for_a_single_consumer(http: httpx.Client) -> None:
    sent = [send(http, "fifo", b"single-%d" % i) for i in range(5)]
    batch = [{"payload_b64": base64.b64encode(b"batch-%d" % i).decode()} for i in range(20)]
    reply = http.post("/v1/mailbox/fifo/batch", json={"messages": batch})
    assert reply.status_code == 201, reply.text
    sent += [m["msg_id"] for m in reply.json()["messages"]]
    seen: list[str] = []
    while got := receive(http, "fifo", max=7):
        seen += [m["msg_id"] for m in got]
        assert ack(http, *(m["receipt"] for m in got)).status_code == 200
    assert seen == sent


def test_batch_send_with_keys_and_headers(http: httpx.Client) -> None:
    messages = [
        {"payload_b64": base64.b64encode(b"a").decode(), "headers": {"h": "1"}},
        {"payload_b64": "", "idempotency_key": "batch-k"},
        {"payload_b64": base64.b64encode(b"c").decode(), "idempotency_key": "batch-k"},
    ]
    reply = http.post("/v1/mailbox/batch-t/batch", json={"messages": messages})
    assert reply.status_code == 201, reply.text
    results = reply.json()["messages"]
    assert results[1]["msg_id"] == results[2]["msg_id"]
    assert [r["duplicate"] for r in results] == [False, False, True]
    got = receive(http, "batch-t", max=10)
    assert [(payload(m), m["headers"]) for m in got] == [(b"a", {"h": "1"}), (b"", {})]


# ---- leases ---------------------------------------------------------------------------


def test_at_least_once_across_a_lease_expiry(http: httpx.Client) -> None:
    msg_id = send(http, "expiry", b"work")
    (first,) = receive(http, "expiry", visibility_s=0.5)
    assert receive(http, "expiry") == []  # invisible while leased
    started = time.monotonic()
    (again,) = receive(http, "expiry", wait_s=20)  # returns when the lease expires
    assert time.monotonic() - started < 15
    assert again["msg_id"] == msg_id
    assert again["delivery_count"] == 2
    assert again["receipt"] != first["receipt"]
    assert ack(http, again["receipt"]).status_code == 200


def test_stale_receipt_is_409_and_removes_nothing(http: httpx.Client) -> None:
    send(http, "stale", b"x")
    (old,) = receive(http, "stale", visibility_s=0.3)
    (new,) = receive(http, "stale", wait_s=20)  # someone else took it after expiry
    reply = ack(http, old["receipt"])
    assert reply.status_code == 409
    body = reply.json()
    assert body["code"] == "conflict"
    assert body["retryable"] is False
    assert body["stale"] == [0]
    assert body["corr_id"] == reply.headers["x-corr-id"]
    assert stats(http, "stale")["in_flight"] == 1  # still there, still leased
    reply = http.post("/v1/mailbox/nack", json={"receipts": [old["receipt"]]})
    assert reply.status_code == 409
    assert ack(http, new["receipt"]).json() == {"acked": 1, "gone": 0}


def test_receive_can_ack_the_previous_batch_in_the_same_call(http: httpx.Client) -> None:
    for body in (b"1", b"2", b"3"):
        send(http, "loop", body)
    first = receive(http, "loop", max=2)
    reply = http.post(
        "/v1/mailbox/loop/receive", json={"max": 2, "ack": [m["receipt"] for m in first]}
    )
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert (data["acked"], data["gone"]) == (2, 0)
    assert [payload(m) for m in data["messages"]] == [b"3"]
    s = stats(http, "loop")
    assert (s["depth"], s["in_flight"]) == (0, 1)
    # A repeated ack is harmless: those receipts are simply gone.
    receipts = [m["receipt"] for m in first + data["messages"]]
    data = http.post("/v1/mailbox/loop/receive", json={"ack": receipts}).json()
    assert (data["messages"], data["acked"], data["gone"]) == ([], 1, 2)
    assert stats(http, "loop")["in_flight"] == 0


def test_receive_with_a_stale_ack_is_409_and_leases_nothing(http: httpx.Client) -> None:
    send(http, "stale-loop", b"x")
    (old,) = receive(http, "stale-loop", visibility_s=0.3)
    (new,) = receive(http, "stale-loop", wait_s=20)  # leased again after expiry
    send(http, "stale-loop", b"y")
    reply = http.post("/v1/mailbox/stale-loop/receive", json={"ack": [old["receipt"]]})
    assert reply.status_code == 409
    assert reply.json()["stale"] == [0]
    s = stats(http, "stale-loop")
    assert (s["depth"], s["in_flight"]) == (1, 1)  # y still waits, x still leased
    reply = http.post("/v1/mailbox/stale-loop/receive", json={"ack": [new["receipt"]]})
    data = reply.json()
    assert data["acked"] == 1
    assert [payload(m) for m in data["messages"]] == [b"y"]
    assert ack(http, data["messages"][0]["receipt"]).json() == {"acked": 1, "gone": 0}


def test_nack_releases_now_or_after_a_delay(http: httpx.Client) -> None:
    send(http, "nack", b"x")
    (m,) = receive(http, "nack")
    reply = http.post("/v1/mailbox/nack", json={"receipts": [m["receipt"]]})
    assert reply.json() == {"released": 1, "gone": 0}
    (m2,) = receive(http, "nack")
    assert (m2["msg_id"], m2["delivery_count"]) == (m["msg_id"], 2)
    reply = http.post("/v1/mailbox/nack", json={"receipts": [m2["receipt"]], "delay_s": 0.5})
    assert reply.status_code == 200
    assert receive(http, "nack") == []
    s = stats(http, "nack")
    assert (s["delayed"], s["in_flight"], s["depth"]) == (1, 0, 0)
    (m3,) = receive(http, "nack", wait_s=20)
    assert m3["delivery_count"] == 3


def test_extend_keeps_a_lease(http: httpx.Client) -> None:
    send(http, "extend", b"x")
    (m,) = receive(http, "extend", visibility_s=0.5)
    reply = http.post("/v1/mailbox/extend", json={"receipts": [m["receipt"]], "visibility_s": 60})
    assert reply.json() == {"extended": 1, "gone": 0}
    assert receive(http, "extend", wait_s=1.5) == []  # would have come back by now
    assert ack(http, m["receipt"]).status_code == 200


def test_delete_by_id(http: httpx.Client) -> None:
    keep = send(http, "delete", b"keep")
    drop = send(http, "delete", b"drop")
    assert http.delete(f"/v1/mailbox/other/messages/{drop}").status_code == 404
    reply = http.delete(f"/v1/mailbox/delete/messages/{drop}")
    assert reply.status_code == 200 and reply.json() == {"deleted": True}
    assert http.delete(f"/v1/mailbox/delete/messages/{drop}").status_code == 404
    assert [m["msg_id"] for m in receive(http, "delete", max=10)] == [keep]
    assert http.delete("/v1/mailbox/delete/messages/not-a-ulid").status_code == 400


def test_idempotency_window(http: httpx.Client) -> None:
    key = {"Idempotency-Key": "order-42"}
    first = http.post("/v1/mailbox/idem/messages", content=b"x", headers=key).json()
    again = http.post("/v1/mailbox/idem/messages", content=b"x", headers=key).json()
    assert again == {"msg_id": first["msg_id"], "duplicate": True}
    assert stats(http, "idem")["depth"] == 1
    other = http.post("/v1/mailbox/idem-2/messages", content=b"x", headers=key).json()
    assert other["msg_id"] != first["msg_id"]  # keys are per topic

    # The window is 1 s here: once it has passed, the same key stores a new message.
    def resend_is_new() -> str | None:
        r = http.post("/v1/mailbox/idem/messages", content=b"x", headers=key).json()
        return None if r["duplicate"] else str(r["msg_id"])

    later = wait_until_sync(resend_is_new, 10, "the dedup window to pass")
    assert later != first["msg_id"]
    assert stats(http, "idem")["depth"] == 2


def test_dead_letter_after_max_deliveries_then_redrive(http: httpx.Client) -> None:
    msg_id = send(http, "poison", b"bad", **{"X-Ron-Header-Why": "test"})
    assert stats(http, "poison")["max_deliveries"] == 2
    (m,) = receive(http, "poison", visibility_s=0.2)
    (m,) = receive(http, "poison", visibility_s=0.2, wait_s=20)
    assert m["delivery_count"] == 2
    wait_until_sync(lambda: stats(http, "poison")["dlq_depth"] == 1, 10, "the dead letter")
    assert receive(http, "poison") == []
    dlq = http.get("/v1/mailbox/poison/dlq").json()
    assert dlq["next_cursor"] is None
    (dead,) = dlq["messages"]
    assert (dead["msg_id"], payload(dead), dead["headers"]) == (msg_id, b"bad", {"why": "test"})
    assert dead["delivery_count"] == 2 and dead["dead_ms"] >= dead["enqueued_ms"]
    reply = http.post("/v1/mailbox/poison/dlq/redrive", json={})
    assert reply.json() == {"redriven": 1}
    (back,) = receive(http, "poison")
    assert (back["msg_id"], back["delivery_count"]) == (msg_id, 1)
    assert ack(http, back["receipt"]).status_code == 200


def test_dead_letter_paging_and_redrive_by_id(http: httpx.Client) -> None:
    ids = [send(http, "poison-2", b"%d" % i) for i in range(3)]
    for _ in range(3):  # max_deliveries = 3 for this topic
        got = receive(http, "poison-2", max=10, visibility_s=0.1, wait_s=20)
        assert len(got) == 3
    wait_until_sync(lambda: stats(http, "poison-2")["dlq_depth"] == 3, 10, "dead letters")
    page = http.get("/v1/mailbox/poison-2/dlq", params={"limit": 2}).json()
    assert [m["msg_id"] for m in page["messages"]] == ids[:2]
    rest = http.get("/v1/mailbox/poison-2/dlq", params={"cursor": page["next_cursor"]}).json()
    assert [m["msg_id"] for m in rest["messages"]] == ids[2:]
    reply = http.post("/v1/mailbox/poison-2/dlq/redrive", json={"msg_ids": [ids[1]]})
    assert reply.json() == {"redriven": 1}
    assert [m["msg_id"] for m in receive(http, "poison-2", max=10)] == [ids[1]]


# ---- waiting and pushing --------------------------------------------------------------


def test_long_poll_returns_as_soon_as_a_message_arrives(
    node: RunningNode, http: httpx.Client
) -> None:
    with (
        ThreadPoolExecutor(1) as pool,
        httpx.Client(base_url=node.http, timeout=30, headers=node.auth) as other,
    ):
        waiting = pool.submit(
            lambda: other.post("/v1/mailbox/longpoll/receive", json={"wait_s": 20, "max": 5})
        )
        wait_for_waiters(node)
        assert not waiting.done()
        sent_at = time.monotonic()
        msg_id = send(http, "longpoll", b"now")
        reply = waiting.result(timeout=20)
        elapsed = time.monotonic() - sent_at
    assert [m["msg_id"] for m in reply.json()["messages"]] == [msg_id]
    assert elapsed < 5, f"long-poll took {elapsed:.2f}s after the send (wait_s was 20)"


def test_sse_subscription_pushes_messages_with_receipts(
    node: RunningNode, http: httpx.Client
) -> None:
    first = send(http, "sse", b"already-there")
    events: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=node.http, timeout=30, headers=node.auth) as sub,
        sub.stream("GET", "/v1/mailbox/sse/subscribe", params={"max_unacked": 10}) as stream,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == ": subscribed"
        later = [send(http, "sse", b"pushed-%d" % i) for i in range(3)]
        event: dict[str, str] = {}
        for line in lines:
            if line.startswith(":"):
                continue
            if line == "":
                if event:
                    events.append(event)
                    event = {}
                if len(events) == 4:
                    break
                continue
            field, _, value = line.partition(": ")
            event[field] = value
    data = [json.loads(e["data"]) for e in events]
    assert [e["event"] for e in events] == ["message"] * 4
    assert [d["msg_id"] for d in data] == [first, *later]
    assert [e["id"] for e in events] == [first, *later]
    assert payload(data[1]) == b"pushed-0"
    reply = ack(http, *(d["receipt"] for d in data))
    assert reply.json() == {"acked": 4, "gone": 0}


def test_sse_rejects_bad_parameters_before_streaming(http: httpx.Client) -> None:
    assert http.get("/v1/mailbox/sse/subscribe", params={"max_unacked": 0}).status_code == 400
    assert http.get("/v1/mailbox/sse/subscribe", params={"bogus": 1}).status_code == 400
    assert http.get("/v1/mailbox/bad%20topic/subscribe").status_code == 400


# ---- refusals -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/mailbox/v/receive", b"[1]"),
        ("/v1/mailbox/v/receive", b"{bad json"),
        ("/v1/mailbox/v/receive", b'{"max": 0}'),
        ("/v1/mailbox/v/receive", b'{"max": 101}'),
        ("/v1/mailbox/v/receive", b'{"max": true}'),
        ("/v1/mailbox/v/receive", b'{"max": 1, "max": 2}'),
        ("/v1/mailbox/v/receive", b'{"wait_s": 21}'),
        ("/v1/mailbox/v/receive", b'{"visibility_s": NaN}'),
        ("/v1/mailbox/v/receive", b'{"surprise": 1}'),
        ("/v1/mailbox/v/receive", b'{"ack": []}'),
        ("/v1/mailbox/v/receive", b'{"ack": "nope"}'),
        ("/v1/mailbox/v/receive", b'{"ack": ["nope"]}'),
        ("/v1/mailbox/ack", b'{"receipts": []}'),
        ("/v1/mailbox/ack", b'{"receipts": ["nope"]}'),
        ("/v1/mailbox/ack", b'{"receipts": "nope"}'),
        ("/v1/mailbox/ack", b""),
        ("/v1/mailbox/nack", b'{"receipts": ["x"], "delay_s": -1}'),
        ("/v1/mailbox/v/batch", b'{"messages": [{"payload_b64": "!!"}]}'),
        ("/v1/mailbox/v/batch", b'{"messages": []}'),
        ("/v1/mailbox/v/dlq/redrive", b'{"max": 0}'),
        ("/v1/mailbox/a.b!/receive", b"{}"),
        ("/v1/mailbox/" + "x" * 129 + "/receive", b"{}"),
    ],
)
def test_bad_requests_are_400_envelopes(http: httpx.Client, path: str, body: bytes) -> None:
    reply = http.post(path, content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["code"] == "bad_request"
    assert reply.headers["content-type"] == "application/json"


def test_oversized_payload_is_413(http: httpx.Client) -> None:
    reply = http.post("/v1/mailbox/big/messages", content=b"x" * (1024 * 1024 + 1))
    assert reply.status_code == 413
    assert reply.json()["code"] == "payload_too_large"
    assert http.post("/v1/mailbox/big/messages", content=b"x" * 1024 * 1024).status_code == 201


def test_bad_message_headers_are_400(http: httpx.Client) -> None:
    reply = http.post("/v1/mailbox/h/messages", content=b"x", headers={"X-Ron-Header-K": "v" * 300})
    assert reply.status_code == 400
    reply = http.post(
        "/v1/mailbox/h/messages", content=b"x", headers={"Idempotency-Key": "has space"}
    )
    assert reply.status_code == 400


def test_metrics_have_no_topic_labels(node: RunningNode, http: httpx.Client) -> None:
    send(http, "metrics", b"x")
    assert node.metric("mailbox_sent_total") >= 1
    assert node.metric("mailbox_messages", state="ready") >= 1
    text = httpx.get(f"{node.admin}/metrics", timeout=10).text
    mailbox_lines = [line for line in text.splitlines() if line.startswith("mailbox_")]
    assert mailbox_lines
    assert not any("topic=" in line for line in mailbox_lines)
