"""Omnigate workers share one tenant's quota and the node's in-flight cap."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from ron.kernel.config import OmnigateConfig
from ron.kernel.metrics import Metrics
from ron.proto.envelope import ErrorCode
from ron.proto.oap import AppId
from ron.services.omnigate.apps import OapRequest, Reply
from ron.services.omnigate.gate import App, Gate
from ron.services.omnigate.workers import SharedGateState


async def _noop(req: OapRequest, reply: Reply) -> None:
    reply.end()


APP = App("storage", _noop)


@pytest.fixture
def gates(tmp_path: Path) -> Iterator[tuple[Gate, Gate]]:
    """Two workers' gates on one run directory: 10 requests of burst, 2 in flight."""
    settings = dataclasses.replace(
        OmnigateConfig(), storage_rps=0.01, burst_factor=1000.0, max_inflight=2
    )
    shared = [SharedGateState(tmp_path, slot, 1024) for slot in (0, 1)]
    pair = tuple(Gate(settings, Metrics(), {}, tls=False, shared=s) for s in shared)
    try:
        yield pair  # type: ignore[misc]
    finally:
        for s in shared:
            s.close()


def test_one_tenants_burst_is_shared_by_the_workers(gates: tuple[Gate, Gate]) -> None:
    a, b = gates
    admitted = 0
    for i in range(30):
        gate = (a, b)[i % 2]
        refusal = gate.admit(APP, AppId.STORAGE, "alpha")
        if refusal is None:
            admitted += 1
            gate.release()
        else:
            assert refusal.code is ErrorCode.QUOTA_EXHAUSTED and refusal.retry_after
    assert admitted == 10  # the burst, once, across both workers
    assert a.admit(APP, AppId.STORAGE, "beta") is None  # another tenant: its own bucket
    # A numeric (frame) tenant never shares a bucket with a named one of the same text.
    a.release()
    assert b.admit(APP, AppId.STORAGE, 7) is None
    b.release()
    assert b.admit(APP, AppId.STORAGE, "7") is None
    b.release()


def test_the_inflight_cap_is_the_nodes(gates: tuple[Gate, Gate]) -> None:
    a, b = gates
    assert a.admit(APP, 0x0A01, 1) is None  # an app without quota: only the cap applies
    assert b.admit(APP, 0x0A01, 1) is None
    refusal = a.admit(APP, 0x0A01, 1)
    assert refusal is not None and refusal.code is ErrorCode.UNAVAILABLE
    assert (a.inflight, b.inflight) == (1, 1)
    b.release()
    assert a.admit(APP, 0x0A01, 1) is None
    assert a.shared is not None and a.shared.inflight() == 2
