"""Where the mailbox's work runs on a real node: in the front ends attached to the file
(default), or all of it in the mailbox process (``mailbox.attach = false``).

Either way the API answers the same; what differs is which process did the work, which
each process's ``mailbox_*`` counters show (the node's /metrics labels them by service).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from support.node import RunningNode, run_node
from support.waiting import wait_until_sync

ENV = {"RON_GATEWAY__QUOTA__ENABLED": "false"}


@pytest.fixture(scope="module", params=[True, False], ids=["attached", "owner_only"])
def node(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningNode, bool]]:
    attach = bool(request.param)
    env = {**ENV, "RON_MAILBOX__ATTACH": "true" if attach else "false"}
    with run_node(tmp_path_factory.mktemp("attach"), env=env) as n:
        yield n, attach


def test_the_work_is_counted_where_it_ran(node: tuple[RunningNode, bool]) -> None:
    n, attach = node
    with httpx.Client(base_url=n.http, timeout=30, headers=n.auth) as http:
        for i in range(3):
            assert http.post("/v1/mailbox/where/messages", content=b"m%d" % i).status_code == 201
        got = http.post("/v1/mailbox/where/receive", json={"max": 10}).json()["messages"]
        assert [m["payload_b64"] for m in got] == ["bTA=", "bTE=", "bTI="]
        acked = http.post("/v1/mailbox/ack", json={"receipts": [m["receipt"] for m in got]})
        assert acked.json() == {"acked": 3, "gone": 0}
        assert http.get("/v1/mailbox/where/stats").json()["depth"] == 0
    by_owner = n.metric("mailbox_sent_total", service="mailbox")
    by_gateway = n.metric("mailbox_sent_total", service="gateway*")
    assert (by_owner, by_gateway) == ((0, 3) if attach else (3, 0))
    assert n.metric("mailbox_acked_total") == 3  # the node's figure: summed over services


def test_a_long_poll_wakes_on_a_send_whichever_process_stores_it(
    node: tuple[RunningNode, bool],
) -> None:
    n, _ = node
    with (
        httpx.Client(base_url=n.http, timeout=30, headers=n.auth) as waiter,
        httpx.Client(base_url=n.http, timeout=30, headers=n.auth) as sender,
        ThreadPoolExecutor(1) as pool,
    ):
        started = time.monotonic()
        poll = pool.submit(waiter.post, "/v1/mailbox/wake/receive", json={"wait_s": 20})
        wait_until_sync(lambda: n.metric("mailbox_waiters") >= 1, 10, "a waiting receiver")
        assert sender.post("/v1/mailbox/wake/messages", content=b"now").status_code == 201
        messages = poll.result(15).json()["messages"]
        assert [m["payload_b64"] for m in messages] == ["bm93"]
        assert time.monotonic() - started < 15


def test_a_lease_taken_by_a_front_end_expires_into_a_waiting_receive(
    node: tuple[RunningNode, bool],
) -> None:
    n, _ = node
    with httpx.Client(base_url=n.http, timeout=30, headers=n.auth) as http:
        assert http.post("/v1/mailbox/expire/messages", content=b"job").status_code == 201
        first = http.post("/v1/mailbox/expire/receive", json={"visibility_s": 0.5}).json()
        assert len(first["messages"]) == 1
        started = time.monotonic()
        again = http.post("/v1/mailbox/expire/receive", json={"wait_s": 20}).json()["messages"]
        assert [m["delivery_count"] for m in again] == [2]
        assert time.monotonic() - started < 10
