"""The soak: steady mixed load at a moderate fixed rate, watching for slow leaks.

Nothing is killed here. The workload of :mod:`support.load` runs at fixed rates per
operation kind for the whole run, with the same end-of-run checks as the chaos drill
(nothing acknowledged lost or corrupted). Meanwhile every node process (the kernel and
each service) is sampled periodically: resident memory (``VmRSS``) and open file
descriptors (``/proc/<pid>/fd``). A leak shows as a slope, so each series gets a
least-squares trend after a warm-up (:func:`support.stats.trend`); growth beyond noise
is flagged.

Run it (``make soak DURATION=900``)::

    PYTHONPATH=tests .venv/bin/python -m support.soak --duration 900

It prints a summary, writes ``bench/results/soak.json``, and exits 1 when a promise was
broken, availability fell below ``--min-availability`` or a trend was flagged.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.load import GET, NODE_CONFIG, NODE_ENV, OAP_GET, PUT, SEND, LoadConfig, Workload
from support.node import RunningNode, run_node
from support.stats import Trend, trend

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "bench" / "results" / "soak.json"
KiB = 1024
MiB = 1024 * KiB

# Operations per second: about 30 requests a second in all, a steady moderate load that
# two shared cores sustain with room to spare, so latency reflects the node, not a queue.
DEFAULT_RATES = {PUT: 3.0, GET: 8.0, SEND: 5.0, OAP_GET: 8.0}

# Growth below these floors is not flagged, however clear its slope: a few MiB over a
# run is allocator arenas and caches settling, not a leak worth a failed soak.
RSS_MIN_GROWTH = 4 * MiB
RSS_MIN_RELATIVE = 0.05
FD_MIN_GROWTH = 4


@dataclass(frozen=True)
class ProcSample:
    pid: int
    rss_bytes: int
    fds: int


def read_proc(pid: int) -> ProcSample | None:
    """Resident memory and open descriptors of ``pid`` (None once it is gone)."""
    try:
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * KiB
                    break
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    return ProcSample(pid, rss, fds)


def node_pids(node: RunningNode) -> dict[str, int]:
    """The kernel's and every live service's process id, by name."""
    status = node.status()
    pids = {"kernel": int(status["node"]["pid"])}
    for s in status["services"]:
        if s["pid"]:
            pids[str(s["service"])] = int(s["pid"])
    return pids


def snapshot(node: RunningNode) -> dict[str, ProcSample]:
    out = {}
    for name, pid in node_pids(node).items():
        sample = read_proc(pid)
        if sample is not None:
            out[name] = sample
    return out


Round = tuple[float, dict[str, ProcSample]]  # seconds since the start, samples by name


class Sampler(threading.Thread):
    """Samples every node process every ``every_s`` seconds until stopped."""

    def __init__(self, node: RunningNode, every_s: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.node = node
        self.every_s = every_s
        self.started = time.monotonic()
        self.rounds: list[Round] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while True:
            at = time.monotonic() - self.started
            self.rounds.append((at, snapshot(self.node)))
            if self.stopping.wait(self.every_s):
                return

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)


def trends(rounds: list[Round], warmup_s: float) -> dict[str, dict[str, Trend]]:
    """RSS and fd trends per process and summed over the node, after ``warmup_s``.

    A process that was restarted is judged on its last incarnation only (a new process
    starts small, which would hide growth or fake it); the node total only on rounds in
    which every process was its last incarnation.
    """
    kept = [(t, samples) for t, samples in rounds if t >= warmup_s]
    last = {name: sample.pid for _, samples in kept for name, sample in samples.items()}
    out: dict[str, dict[str, Trend]] = {}
    for name, pid in last.items():
        points = [(t, s[name]) for t, s in kept if name in s and s[name].pid == pid]
        out[name] = _judge([t for t, _ in points], [(p.rss_bytes, p.fds) for _, p in points])
    whole = [
        (t, s)
        for t, s in kept
        if s.keys() == last.keys() and all(s[n].pid == pid for n, pid in last.items())
    ]
    out["node_total"] = _judge(
        [t for t, _ in whole],
        [(sum(p.rss_bytes for p in s.values()), sum(p.fds for p in s.values())) for _, s in whole],
    )
    return out


def _judge(times: list[float], values: list[tuple[int, int]]) -> dict[str, Trend]:
    return {
        "rss": trend(
            times,
            [rss for rss, _ in values],
            min_growth=RSS_MIN_GROWTH,
            min_relative=RSS_MIN_RELATIVE,
        ),
        "fds": trend(times, [fds for _, fds in values], min_growth=FD_MIN_GROWTH),
    }


def run_soak(
    node: RunningNode,
    *,
    duration_s: float,
    rates: dict[str, float] | None = None,
    sample_every_s: float | None = None,
    warmup_fraction: float = 0.2,
    drain_timeout_s: float = 60.0,
    seed: int | None = None,
) -> dict[str, Any]:
    """Steady load on ``node`` for ``duration_s``; returns the report."""
    every = sample_every_s or min(10.0, max(1.0, duration_s / 90))
    load = LoadConfig(rates=dict(rates or DEFAULT_RATES), visibility_s=30.0, seed=seed)
    workload = Workload(node, load)
    start = snapshot(node)
    sampler = Sampler(node, every)
    sampler.start()
    started = time.monotonic()
    workload.start()
    finish_at = started + duration_s
    # The soak is defined by wall-clock time: let it run, reporting now and then.
    while (left := finish_at - time.monotonic()) > 0:
        if sampler.stopping.wait(min(30.0, left)):
            break
        print(
            f"soak: {time.monotonic() - started:.0f}s, "
            f"{sum(workload.recorder.ok.values())} ops ok, "
            f"{sum(workload.recorder.failed.values())} failed",
            file=sys.stderr,
            flush=True,
        )
    load_seconds = time.monotonic() - started
    sampler.stop()
    end = snapshot(node)
    workload.finish(drain_timeout_s)
    judged = trends(sampler.rounds, warmup_fraction * duration_s)
    summary = workload.summary()
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(load_seconds, 1),
        "rates_per_s": load.rates,
        "sample_every_s": every,
        "warmup_s": round(warmup_fraction * duration_s, 1),
        "availability_pct": summary["availability_pct"],
        "ops": summary["ops"],
        "processes": {
            name: {
                "start": _proc_json(start.get(name)),
                "end": _proc_json(end.get(name)),
            }
            for name in sorted(set(start) | set(end))
        },
        "fds_total": {
            "start": sum(s.fds for s in start.values()),
            "end": sum(s.fds for s in end.values()),
        },
        "rss_total_bytes": {
            "start": sum(s.rss_bytes for s in start.values()),
            "end": sum(s.rss_bytes for s in end.values()),
        },
        "trends": {
            name: {series: t.to_json() for series, t in by.items()} for name, by in judged.items()
        },
        "flagged": sorted(
            f"{name}.{series}"
            for name, by in judged.items()
            for series, t in by.items()
            if t.flagged
        ),
        "samples": [
            {"t": round(t, 2), **{n: [p.rss_bytes, p.fds] for n, p in samples.items()}}
            for t, samples in sampler.rounds
        ],
        "check": {k: v for k, v in summary.items() if k not in ("ops", "availability_pct")},
    }
    return report


def _proc_json(sample: ProcSample | None) -> dict[str, int] | None:
    if sample is None:
        return None
    return {"pid": sample.pid, "rss_bytes": sample.rss_bytes, "fds": sample.fds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m support.soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=900.0, help="seconds of load")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every rate")
    parser.add_argument("--sample-every", type=float, default=None, help="seconds")
    parser.add_argument("--min-availability", type=float, default=99.9, help="percent")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="kept; default a temp dir")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ron-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rates = {kind: rate * args.scale for kind, rate in DEFAULT_RATES.items()}
    print(f"soak: node in {workdir}", file=sys.stderr, flush=True)
    with run_node(workdir, config=NODE_CONFIG, env=NODE_ENV) as node:
        report = run_soak(
            node,
            duration_s=args.duration,
            rates=rates,
            sample_every_s=args.sample_every,
            seed=args.seed,
        )
    check = report["check"]
    availability = report["availability_pct"] or 0.0
    failures = []
    if check["violations"] or check["driver_errors"]:
        failures.append("broken promises")
    if availability < args.min_availability:
        failures.append(f"availability {availability}% < {args.min_availability}%")
    if report["flagged"]:
        failures.append(f"growth beyond noise: {', '.join(report['flagged'])}")
    report["ok"] = not failures
    report["failures"] = failures
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    print(_human(report))
    print(f"soak: report written to {args.out}")
    if failures:
        print(f"soak: FAILED ({'; '.join(failures)}); node kept in {workdir}", file=sys.stderr)
    elif args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if not failures else 1


def _human(report: dict[str, Any]) -> str:
    lines = [
        f"soak {report['duration_s']}s at {report['rates_per_s']} ops/s per kind; "
        f"availability {report['availability_pct']}%"
    ]
    for kind, o in report["ops"].items():
        lines.append(
            f"  {kind:8} ok {o['ok']:6} failed {o['failed']:4}  p50 {o['p50_ms']} ms"
            f"  p95 {o['p95_ms']} ms  p99 {o['p99_ms']} ms"
        )
    lines.append("  process     rss start -> end (MiB)   fds start -> end   rss trend (KiB/h)")
    for name, p in report["processes"].items():
        s, e = p["start"] or {}, p["end"] or {}
        t = report["trends"].get(name, {}).get("rss", {})
        flag = "  FLAGGED" if t.get("flagged") else ""
        lines.append(
            f"  {name:10} {_mib(s.get('rss_bytes')):>8} -> {_mib(e.get('rss_bytes')):>8}"
            f"   {s.get('fds', '-'):>5} -> {e.get('fds', '-'):<5}"
            f"   {_kib(t.get('per_hour'))}{flag}"
        )
    total = report["trends"]["node_total"]
    lines.append(
        f"  node total {_mib(report['rss_total_bytes']['start']):>8} -> "
        f"{_mib(report['rss_total_bytes']['end']):>8}   {report['fds_total']['start']:>5} -> "
        f"{report['fds_total']['end']:<5}   {_kib(total['rss'].get('per_hour'))}"
    )
    check = report["check"]
    lines.append(
        f"objects stored {check['objects_stored']} verified {check['objects_verified']}; "
        f"sends confirmed {check['sends_confirmed']} received {check['sends_received']}; "
        f"violations {check['violations'] or 'none'}; flagged {report['flagged'] or 'none'}"
    )
    lines.append("OK" if report["ok"] else f"FAILED: {'; '.join(report['failures'])}")
    return "\n".join(lines)


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MiB:.1f}"


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value / KiB:+.0f}"


if __name__ == "__main__":
    sys.exit(main())
