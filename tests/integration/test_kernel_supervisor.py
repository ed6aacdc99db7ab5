"""The supervisor with real child processes: restarts, quarantine, reload, IPC hygiene."""

from __future__ import annotations

import os
import signal
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from ron.ipc import IpcClient
from ron.kernel import KernelEvent
from ron.kernel.node import ConfigSource, Node
from ron.kernel.spec import ServiceSpec
from support.waiting import wait_until

STEADY = ServiceSpec("steady", "support.services:Steady")
CRASHER = ServiceSpec("crasher", "support.services:Crasher", required=False)


def _source(data_dir: Path, config_file: Path | None = None, **flags: object) -> ConfigSource:
    base = {
        "data_dir": str(data_dir),
        "admin": "127.0.0.1:0",
        "supervisor": {"health_interval_s": 0.2, "backoff_initial_s": 0.02},
        "kernel": {"reload_poll_s": 0.05},
    }
    base.update(flags)
    return ConfigSource(file=config_file, env={}, flags=base)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    source = _source(tmp_path / "data")
    async with Node(source.load(), [STEADY], source=source) as n:
        assert await n.wait_ready(20)
        yield n


def _child(node: Node, name: str) -> dict[str, object]:
    return next(s for s in node.host.status() if s["service"] == name)


async def test_sigkilled_service_is_restarted_and_healthy_again(node: Node) -> None:
    sub = node.bus.subscribe()
    pid = _child(node, "steady")["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    crashed = await sub.wait_for(lambda e: isinstance(e, KernelEvent.ServiceCrashed), 10)
    assert crashed == KernelEvent.ServiceCrashed("steady", "killed by signal SIGKILL")
    await sub.wait_for(lambda e: e == KernelEvent.Health("steady", True), 20)
    status = _child(node, "steady")
    assert status["pid"] not in (None, pid)
    assert status["restarts"] == 1
    assert node.health.ready()
    text = (await node.metrics_text()).decode()
    assert 'service_restarts_total{service="steady"} 1.0' in text
    assert 'steady_calls_total{service="steady"}' in text  # the child's own registry
    assert (
        node.metrics.registry.get_sample_value("service_restarts_total", {"service": "steady"})
        == 1.0
    )
    assert (
        node.metrics.registry.get_sample_value("rejected_total", {"reason": "service_crash"}) == 1.0
    )
    # The restarted child answers over IPC again.
    client = IpcClient(str(node.run_dir / "steady.sock"))
    try:
        reply = await client.call("echo", {"value": 7})
        assert reply["echo"] == 7 and reply["pid"] == status["pid"]
    finally:
        await client.close()


async def test_crash_loop_is_quarantined_after_five_restarts(tmp_path: Path) -> None:
    source = _source(tmp_path / "data")
    async with Node(source.load(), [STEADY, CRASHER], source=source) as n:
        sub = n.bus.subscribe()
        for _ in range(6):
            await sub.wait_for(
                lambda e: isinstance(e, KernelEvent.ServiceCrashed) and e.service == "crasher",
                30,
            )
        status = await wait_until(
            lambda: _child(n, "crasher")["quarantined"] and _child(n, "crasher"), 10
        )
        assert status["restarts"] == 5
        assert status["last_reason"] == "exit code 3"
        assert (
            n.metrics.registry.get_sample_value("service_quarantined", {"service": "crasher"})
            == 1.0
        )
        async with httpx.AsyncClient(base_url=n.urls["admin"]) as http:
            body = (await http.get("/v1/status")).json()
            assert any(s["quarantined"] for s in body["services"] if s["service"] == "crasher")
            metrics = (await http.get("/metrics")).text
            assert 'service_quarantined{service="crasher"} 1.0' in metrics
            # An operator restart lifts the quarantine: the service runs (and crashes) again.
            assert (await http.post("/v1/services/crasher/restart")).status_code == 202
            await sub.wait_for(
                lambda e: isinstance(e, KernelEvent.ServiceCrashed) and e.service == "crasher",
                30,
            )
            assert (await http.post("/v1/services/nosuch/restart")).status_code == 404


async def test_invalid_config_edit_keeps_old_values_and_valid_one_bumps_version(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "ron.toml"
    cfg.write_text('log_level = "info"\n')
    source = _source(tmp_path / "data", cfg)
    async with Node(source.load(), [STEADY], source=source) as n:
        assert await n.wait_ready(20)
        sub = n.bus.subscribe()
        cfg.write_text('log_level = "loudest"\n')
        await wait_until(
            lambda: n.metrics.registry.get_sample_value("config_reload_failures_total") == 1.0,
            10,
            "the invalid edit to be rejected",
        )
        assert n.config.log_level == "info"
        assert n.config_version == 1
        assert sub.try_recv() is None
        cfg.write_text('log_level = "debug"\n')
        event = await sub.wait_for(lambda e: isinstance(e, KernelEvent.ConfigUpdated), 10)
        assert event == KernelEvent.ConfigUpdated(2)
        assert n.config.log_level == "debug"


async def test_malformed_ipc_frame_gets_an_error_and_the_service_stays_up(node: Node) -> None:
    path = str(node.run_dir / "steady.sock")
    pid = _child(node, "steady")["pid"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(5)
        raw.connect(path)
        raw.sendall(struct.pack(">I", 5) + b"\xc1\xc1\xc1\xc1\xc1")  # 0xc1 is never valid msgpack
        reply = raw.recv(65536)
        assert reply, "the service must answer a malformed frame before closing"
        assert b"bad_request" in reply
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(5)
        raw.connect(path)
        raw.sendall(struct.pack(">I", 0xFFFFFFF0))  # a length far over the frame limit
        assert b"payload_too_large" in raw.recv(65536)
    client = IpcClient(path)
    try:
        assert (await client.call("echo", {"value": "still here"}))["echo"] == "still here"
    finally:
        await client.close()
    assert _child(node, "steady")["pid"] == pid
    assert _child(node, "steady")["restarts"] == 0
