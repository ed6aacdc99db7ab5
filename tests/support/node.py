"""Start a node exactly as a user does (``ron up``) and talk to it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from support.waiting import wait_until_sync

RON = str(Path(sys.executable).with_name("ron"))


@dataclass
class RunningNode:
    proc: subprocess.Popen[str]
    urls: dict[str, str]
    data_dir: Path
    config_file: Path | None
    log_file: Path

    @property
    def http(self) -> str:
        return self.urls["http"]

    @property
    def admin(self) -> str:
        return self.urls["admin"]

    @property
    def token(self) -> str | None:
        """The owner token ``ron up`` wrote into the data dir (None before it exists)."""
        path = self.data_dir / "auth" / "owner.token"
        return path.read_text().strip() if path.exists() else None

    @property
    def auth(self) -> dict[str, str]:
        """Headers that authorize the owner: pass to every write and mailbox request."""
        token = self.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def mint(self, tenant: str, **caveats: Any) -> str:
        """A token for ``tenant`` minted offline against this node's data dir, as
        ``ron cap mint`` does (the node picks up its keyring without a restart)."""
        from ron.auth import Authority, token_caveats

        authority = Authority(self.data_dir, overlap_s=7 * 86400, actor="test")
        return authority.mint(token_caveats(tenant=tenant, **caveats)).serialize()

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.admin}/v1/status", timeout=10).json()
        return data

    def gateway_workers(self) -> list[str]:
        """The gateway's worker services (``gateway``, ``gateway-2``...), as running."""
        names = [s["service"] for s in self.status()["services"]]
        return [n for n in names if n == "gateway" or n.startswith("gateway-")]

    def service_pid(self, name: str) -> int:
        for s in self.status()["services"]:
            if s["service"] == name and s["pid"]:
                return int(s["pid"])
        raise AssertionError(f"service {name} has no pid")

    def wait_healthy(
        self, name: str, other_than_pid: int | None = None, timeout: float = 30
    ) -> int:
        def check() -> int | None:
            for s in self.status()["services"]:
                if s["service"] == name and s["healthy"] and s["pid"] not in (None, other_than_pid):
                    return int(s["pid"])
            return None

        return wait_until_sync(check, timeout, f"{name} to be healthy")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``; a value
        ending in ``*`` matches by prefix (``service="gateway*"``: every gateway worker)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.admin}/metrics", timeout=10).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    _label_matches(sample.labels.get(k), v) for k, v in labels.items()
                ):
                    total += sample.value
        return total

    def logs(self) -> str:
        return self.log_file.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def _label_matches(actual: str | None, wanted: str) -> bool:
    if wanted.endswith("*"):
        return actual is not None and actual.startswith(wanted[:-1])
    return actual == wanted


@contextmanager
def run_node(
    tmp: Path,
    *,
    config: str | None = None,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    cwd: Path | None = None,
) -> Iterator[RunningNode]:
    """``ron up`` on port 0 in ``tmp``; yields once the node printed ``ready``."""
    data_dir = tmp / "data"
    config_file = None
    args = [RON, "up", "--data-dir", str(data_dir), "--admin", "127.0.0.1:0"]
    args += ["--http", "127.0.0.1:0", "--oap", "127.0.0.1:0", *(extra_args or [])]
    if config is not None:
        config_file = tmp / "ron.toml"
        config_file.write_text(config)
        args += ["--config", str(config_file)]
    log_file = tmp / "node.log"
    full_env = {
        **os.environ,
        "RON_SUPERVISOR__BACKOFF_INITIAL_S": "0.05",
        "RON_SUPERVISOR__HEALTH_INTERVAL_S": "0.25",
        **(env or {}),
    }
    with open(log_file, "w") as log:
        proc = subprocess.Popen(
            args, cwd=cwd or tmp, stdout=subprocess.PIPE, stderr=log, text=True, env=full_env
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("ready "):
            raise AssertionError(f"node did not become ready: {line!r}\n{log_file.read_text()}")
        urls = dict(item.split("=", 1) for item in line.split()[1:])
        yield RunningNode(proc, urls, data_dir, config_file, log_file)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def node_file(data_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((data_dir / "node.json").read_text())
    return data
