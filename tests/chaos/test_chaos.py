"""Sixty seconds of mixed load while random services are SIGKILLed every few seconds:
nothing acknowledged is lost or corrupted, and every killed service comes back.

The same drill as ``make chaos`` (``support.chaos``), shortened to fit ``make test``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.chaos import CHAOS_ENV, SERVICES, run_chaos
from support.load import NODE_CONFIG
from support.node import run_node

LOAD_SECONDS = 60
KILL_EVERY_S = 3.0


@pytest.mark.slow
@pytest.mark.timeout(LOAD_SECONDS + 240)
def test_nothing_acknowledged_is_lost_while_services_are_killed(tmp_path: Path) -> None:
    with run_node(tmp_path, config=NODE_CONFIG, env=CHAOS_ENV) as node:
        summary = run_chaos(node, duration_s=LOAD_SECONDS, kill_every_s=KILL_EVERY_S)
    report = json.dumps(summary, indent=1, sort_keys=True)
    print(report)

    assert not summary["driver_errors"], report
    assert summary["chaos_error"] is None, report
    assert summary["violations"] == {}, report
    # The drill really happened: services died and came back, under real load.
    assert summary["kills"] >= 5, report
    assert summary["recoveries"] == summary["kills"], report
    assert set(SERVICES) <= set(summary["kills_by_service"]), report  # each one, at least once
    for kind in ("put", "get", "send", "receive", "ack", "oap_get"):
        assert summary["ops"][kind]["ok"] > 0, f"no successful {kind}\n{report}"
    assert summary["objects_verified"] == summary["objects_stored"] > 0, report
    assert summary["sends_received"] >= summary["sends_confirmed"] > 0, report
    assert summary["ok"], report
