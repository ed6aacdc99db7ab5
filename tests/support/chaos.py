"""The chaos drill: mixed load against one node while its services are SIGKILLed.

A chaos thread picks a random service (index, storage, overlay, mailbox, gateway,
omnigate), SIGKILLs the process ``/v1/status`` names for it, and times how long the
supervisor takes to have a new process healthy again (time-to-ready). Meanwhile the
workload of :mod:`support.load` keeps putting, getting, sending, receiving, acking and
fetching over OAP, retrying through the outages as the SDK does. At the end every
promise the node made is checked (see :mod:`support.load`): nothing acknowledged may be
lost, corrupted, or delivered again after its ack.

Run it standalone (``make chaos DURATION=120``)::

    PYTHONPATH=tests .venv/bin/python -m support.chaos --duration 120 --kill-every 3

It starts its own node, prints progress to stderr and one JSON summary line last on
stdout, and exits 1 when any promise was broken or a service did not recover.
``tests/chaos/test_chaos.py`` runs the same drill for 60 seconds inside ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from support.load import NODE_CONFIG, NODE_ENV, NOT_RECOVERED, LoadConfig, Workload
from support.node import RunningNode, run_node
from support.stats import percentile
from support.waiting import wait_until_sync

SERVICES = ("index", "storage", "overlay", "mailbox", "gateway", "omnigate")

CHAOS_ENV = {
    **NODE_ENV,
    # The drill kills on purpose, faster than any real crash loop: the crash-loop brake
    # (quarantine after max_restarts crashes a minute) would stop the recoveries it
    # measures. Restart backoff stays as configured: it is part of time-to-ready.
    "RON_SUPERVISOR__MAX_RESTARTS": "100000",
}


@dataclass
class Kill:
    """One SIGKILL and what came of it."""

    service: str
    pid: int
    at: float  # monotonic time of the kill
    new_pid: int | None = None
    time_to_ready_s: float | None = None  # None: not healthy again within the deadline


class Chaos(threading.Thread):
    """Every ``every_s`` seconds, SIGKILL a random service and wait for its recovery.

    A kill is only made once the previous victim is healthy again, so each recovery is
    timed alone (``every_s`` counts from that recovery).
    """

    def __init__(
        self,
        node: RunningNode,
        *,
        every_s: float,
        rng: random.Random,
        recovery_timeout_s: float = 60.0,
        services: Sequence[str] = SERVICES,
    ) -> None:
        super().__init__(name="chaos", daemon=True)
        self.node = node
        self.every_s = every_s
        self.rng = rng
        self.recovery_timeout_s = recovery_timeout_s
        self.services = tuple(services)
        self.kills: list[Kill] = []
        self._bag: list[str] = []
        self.stopping = threading.Event()
        self.error: str | None = None
        self._admin = httpx.Client(base_url=node.admin, timeout=5)

    def stop(self) -> None:
        self.stopping.set()
        self.join(self.recovery_timeout_s + 30)
        self._admin.close()

    def run(self) -> None:
        try:
            while not self.stopping.wait(self.every_s):
                kill = self._kill_one()
                if kill is not None:
                    self._await_recovery(kill)
        except Exception as exc:  # report, never hang the drill
            self.error = f"{type(exc).__name__}: {exc}"

    def _services(self) -> dict[str, dict[str, Any]]:
        reply = self._admin.get("/v1/status")
        reply.raise_for_status()
        return {str(s["service"]): s for s in reply.json()["services"]}

    def _next_victim(self) -> str:
        """Services in a fresh random order each round (a shuffled bag): random, yet a
        short drill still kills every service, and none twice before all once."""
        if not self._bag:
            # Extra gateway workers (gateway-2...) are victims too, when they exist.
            extra = [n for n in self._services() if n.startswith("gateway-")]
            self._bag = [*self.services, *(n for n in extra if n not in self.services)]
            self.rng.shuffle(self._bag)
        return self._bag.pop()

    def _kill_one(self) -> Kill | None:
        victim = self._next_victim()
        pid = self._services()[victim]["pid"]
        if not pid:
            return None  # between two processes already: skip it this round
        kill = Kill(victim, int(pid), time.monotonic())
        try:
            os.kill(kill.pid, signal.SIGKILL)
        except ProcessLookupError:
            return None  # it died on its own just now; not our kill to time
        self.kills.append(kill)
        print(f"chaos: killed {victim} (pid {pid})", file=sys.stderr, flush=True)
        return kill

    def _await_recovery(self, kill: Kill) -> None:
        """Poll ``/v1/status`` until a new process of the service is healthy."""

        def healthy_again() -> int | None:
            s = self._services()[kill.service]
            if s["healthy"] and s["pid"] not in (None, kill.pid):
                return int(s["pid"])
            return None

        remaining = kill.at + self.recovery_timeout_s - time.monotonic()
        try:
            kill.new_pid = wait_until_sync(healthy_again, remaining, f"{kill.service} healthy")
        except AssertionError:
            return  # reported as not recovered
        kill.time_to_ready_s = time.monotonic() - kill.at

    def summary(self) -> dict[str, Any]:
        recovered = [k.time_to_ready_s for k in self.kills if k.time_to_ready_s is not None]
        by_service: dict[str, list[float]] = {}
        for k in self.kills:
            if k.time_to_ready_s is not None:
                by_service.setdefault(k.service, []).append(k.time_to_ready_s)
        return {
            "kills": len(self.kills),
            "recoveries": len(recovered),
            "kills_by_service": dict(Counter(k.service for k in self.kills)),
            "time_to_ready_p50_s": _s(percentile(recovered, 50)),
            "time_to_ready_p99_s": _s(percentile(recovered, 99)),
            "time_to_ready_max_s": _s(max(recovered)) if recovered else None,
            "time_to_ready_p99_by_service_s": {
                name: _s(percentile(v, 99)) for name, v in sorted(by_service.items())
            },
            "chaos_error": self.error,
        }


def _s(seconds: float) -> float | None:
    return None if seconds != seconds else round(seconds, 3)


def run_chaos(
    node: RunningNode,
    *,
    duration_s: float,
    kill_every_s: float = 3.0,
    seed: int | None = None,
    load: LoadConfig | None = None,
    drain_timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Load ``node`` for ``duration_s`` while killing its services; returns the summary
    (``ok`` is false when any promise was broken or any service did not recover)."""
    seed = seed if seed is not None else random.randrange(1 << 32)
    load = load or LoadConfig()
    load.seed = seed
    workload = Workload(node, load)
    chaos = Chaos(node, every_s=kill_every_s, rng=random.Random(seed))
    started = time.monotonic()
    workload.start()
    chaos.start()
    # The drill is defined by wall-clock time: let it run, reporting now and then.
    finish_at = started + duration_s
    while (left := finish_at - time.monotonic()) > 0:
        if chaos.stopping.wait(min(10.0, left)):
            break
        ops = sum(workload.recorder.ok.values())
        print(
            f"chaos: {time.monotonic() - started:.0f}s, {ops} ops, {len(chaos.kills)} kills",
            file=sys.stderr,
            flush=True,
        )
    chaos.stop()
    for kill in chaos.kills:
        if kill.time_to_ready_s is None:
            workload.ledger.violation(
                NOT_RECOVERED,
                f"{kill.service} (pid {kill.pid}) not healthy {chaos.recovery_timeout_s}s"
                " after its kill",
            )
    load_seconds = time.monotonic() - started
    workload.finish(drain_timeout_s)
    summary: dict[str, Any] = {
        "seed": seed,
        "duration_s": round(load_seconds, 1),
        "kill_every_s": kill_every_s,
        **chaos.summary(),
        **workload.summary(),
    }
    summary["ok"] = not summary["violations"] and not summary["driver_errors"] and not chaos.error
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m support.chaos", description=__doc__)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between kills")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="kept; default a temp dir")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ron-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"chaos: node in {workdir}", file=sys.stderr, flush=True)
    with run_node(workdir, config=NODE_CONFIG, env=CHAOS_ENV) as node:
        summary = run_chaos(
            node, duration_s=args.duration, kill_every_s=args.kill_every, seed=args.seed
        )
    print(_human(summary), file=sys.stderr)
    print(json.dumps(summary, sort_keys=True), flush=True)
    if summary["ok"] and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not summary["ok"]:
        print(f"chaos: FAILED; node data and log kept in {workdir}", file=sys.stderr)
    return 0 if summary["ok"] else 1


def _human(summary: dict[str, Any]) -> str:
    lines = [
        f"duration {summary['duration_s']}s, seed {summary['seed']}",
        f"kills {summary['kills']} ({summary['kills_by_service']}), "
        f"recoveries {summary['recoveries']}, time-to-ready p50 "
        f"{summary['time_to_ready_p50_s']}s p99 {summary['time_to_ready_p99_s']}s "
        f"max {summary['time_to_ready_max_s']}s",
    ]
    for kind, o in summary["ops"].items():
        lines.append(
            f"  {kind:8} ok {o['ok']:6} failed {o['failed']:4}  p50 {o['p50_ms']} ms"
            f"  p99 {o['p99_ms']} ms  errors {o['errors'] or '-'}"
        )
    lines.append(
        f"objects stored {summary['objects_stored']} verified {summary['objects_verified']}; "
        f"sends confirmed {summary['sends_confirmed']} received {summary['sends_received']}; "
        f"stale acks {summary['stale_acks']}; retries {summary['retries']}"
    )
    verdict = "OK" if summary["ok"] else "FAILED"
    lines.append(f"violations: {summary['violations'] or 'none'} -> {verdict}")
    lines.extend(f"  {e}" for e in summary["violation_examples"])
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
