"""The kernel as an operator runs it: a real process, real signals, real HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ron.ipc import IpcClient
from support.waiting import wait_until_sync

READY_TIMEOUT = 30


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "RON_LOG_LEVEL": "warning"},
    )


def _urls(proc: subprocess.Popen[str]) -> dict[str, str]:
    """Read the ``ready k=v ...`` line (readline blocks until the node prints it)."""
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.startswith("ready "), f"expected a ready line, got {line!r}"
    return dict(item.split("=", 1) for item in line.split()[1:])


@pytest.fixture
def steady_node(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str], Path]]:
    data = tmp_path / "data"
    proc = _start(
        [
            sys.executable,
            "-m",
            "support.node_main",
            "--data-dir",
            str(data),
            "--spec",
            "steady=support.services:Steady",
        ],
        tmp_path,
    )
    try:
        yield proc, _urls(proc), data
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_ron_up_prints_ready_and_serves_health_on_port_zero(tmp_path: Path) -> None:
    ron = str(Path(sys.executable).with_name("ron"))
    proc = _start(
        [ron, "up", "--data-dir", str(tmp_path / "d"), "--admin", "127.0.0.1:0"], tmp_path
    )
    try:
        urls = _urls(proc)
        assert not urls["admin"].endswith(":0")
        assert httpx.get(f"{urls['admin']}/healthz").status_code == 200
        ready = httpx.get(f"{urls['admin']}/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        metrics = httpx.get(f"{urls['admin']}/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        assert "bus_overflow_dropped_total" in metrics.text
        status = subprocess.run(
            [ron, "status", "--data-dir", str(tmp_path / "d")], capture_output=True, text=True
        )
        assert status.returncode == 0, status.stderr
        assert "ready" in status.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_second_node_on_the_same_data_dir_is_refused(
    steady_node: tuple[subprocess.Popen[str], dict[str, str], Path],
) -> None:
    _, _, data = steady_node
    ron = str(Path(sys.executable).with_name("ron"))
    second = subprocess.run(
        [ron, "up", "--data-dir", str(data), "--admin", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 1
    assert "another node is running" in second.stderr


def test_sigterm_drains_in_flight_work_and_exits_zero(
    steady_node: tuple[subprocess.Popen[str], dict[str, str], Path],
) -> None:
    proc, urls, data = steady_node
    status = httpx.get(f"{urls['admin']}/v1/status").json()
    child_pid = next(s["pid"] for s in status["services"] if s["service"] == "steady")
    sock = str(_run_dir(data) / "steady.sock")

    async def slow_call_across_sigterm() -> dict[str, object]:
        client = IpcClient(sock)
        try:
            call = asyncio.create_task(client.call("slow", {"seconds": 1.0}, timeout=10))
            async with httpx.AsyncClient() as http:

                async def started() -> bool:
                    text = (await http.get(f"{urls['admin']}/metrics")).text
                    return 'steady_slow_started_total{service="steady"} 1.0' in text

                async with asyncio.timeout(10):
                    while not await started():
                        await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            result: dict[str, object] = await call
            return result
        finally:
            await client.close()

    assert asyncio.run(slow_call_across_sigterm()) == {"done": True}
    assert proc.wait(30) == 0
    wait_until_sync(lambda: not _alive(child_pid), 10, "the child to exit")


def _run_dir(data: Path) -> Path:
    import json

    return Path(json.loads((data / "node.json").read_text())["run_dir"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); check its state.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
