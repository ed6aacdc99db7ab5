"""The HTTP gateway against named baselines, every ratio from figures of this one run.

- GET of a 1 KiB object, requests/s (wrk, loopback, 1 thread, a few connections): the
  node as ``ron up`` starts it vs nginx serving the same bytes as a static file, and vs
  a plain Starlette ``StaticFiles`` app on uvicorn (httptools, uvloop).
- GET of a 256 MiB object, MB/s end to end with verification on (curl to /dev/null):
  the first GET after the verified-state record is invalidated (hashes while it
  streams) and warm GETs (record valid) vs nginx with sendfile.
- PUT of a 256 MiB file through ``POST /put`` (curl streaming from disk; fresh content
  every time), MB/s, vs BLAKE3 of the same file in this Python process; also vs two
  ceilings no PUT can beat: writing and fsyncing the same bytes on the node's disk, and
  curl pushing them over loopback into a server that discards them.
- Resident memory of the node's whole process tree: idle, and peak while serving and
  while ingesting the 256 MiB object; the budget is idle + 100 MiB.

The machine is shared and drifts, so each figure is the best of a few short runs
(interference only ever slows a run down), and servers are measured in alternation.
MB/s here is 10^6 bytes per second.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import httpx
import tools
from report import Report

from ron.proto.address import parse_address
from ron.services.storage.store import ObjectStore

SMALL = 1024
BIG = 256 * 1024 * 1024
WRK_SECONDS = 4.0
WRK_WARMUP_SECONDS = 1.0
WRK_CONNECTIONS = 4
WRK_ROUNDS = 3
BIG_GETS = 5
PUTS = 3
MEMORY_BUDGET = 100 * tools.MiB

# One client hammering the node is exactly what the default anonymous quota is there to
# stop (it answers 429); lift it so the benchmark measures serving, not policy. The
# admission code still runs on every request.
NODE_ENV = {
    "RON_GATEWAY__QUOTA__RPS": "1e12",
    "RON_GATEWAY__QUOTA__BURST": "1e12",
    "RON_GATEWAY__QUOTA__BYTES_PER_S": "1e15",
    "RON_GATEWAY__QUOTA__BYTES_BURST": "1e15",
}


def run(report: Report) -> None:
    tools.ensure_tools("wrk", "nginx", "curl")
    with tempfile.TemporaryDirectory(prefix="ron-bench-gateway-") as tmp:
        _run(report, Path(tmp))


def _run(report: Report, tmp: Path) -> None:
    started = time.monotonic()
    www = tmp / "www"
    www.mkdir()
    small_bytes = os.urandom(SMALL)
    (www / "small.bin").write_bytes(small_bytes)
    big = www / "big.bin"
    _write_random(big, BIG)
    with (
        tools.ron_node(tmp, env=NODE_ENV) as node,
        tools.nginx(www, tmp) as nginx_server,
        tools.starlette_static(www) as static_server,
        httpx.Client(timeout=60) as client,
    ):
        reply = client.post(
            f"{node.http}/put",
            content=small_bytes,
            headers={"content-type": "application/octet-stream", **node.auth},
        )
        reply.raise_for_status()
        small_addr = reply.json()["address"]
        check = client.get(f"{node.http}/o/{small_addr}")
        if check.content != small_bytes:
            raise RuntimeError("the node served other bytes than it stored")
        idle = _idle_rss(node.pid)
        report.figure("gateway.node_processes", len(tools.process_tree(node.pid)), "processes")

        small_targets = {
            "node": tools.Server(f"{node.http}/o/{small_addr}", node.pid),
            "nginx": tools.Server(f"{nginx_server.url}/small.bin", nginx_server.pid),
            "staticfiles": tools.Server(f"{static_server.url}/small.bin", static_server.pid),
        }
        _small_gets(report, small_targets)
        big_addr, ingest_peak = _puts(report, node, big, tmp)
        serve_peak = _big_gets(report, node, big_addr, f"{nginx_server.url}/big.bin")
        _memory(report, idle, serve_peak, ingest_peak)
    report.figure("gateway.bench_seconds", time.monotonic() - started, "s")


# --- 1 KiB GET -------------------------------------------------------------------------


def _small_gets(report: Report, targets: dict[str, tools.Server]) -> None:
    """Best of a few rounds per server, servers in alternation. Also the CPU time each
    server's whole process tree spent per request: less sensitive than requests/s to
    other work on the machine, and it says where a server's capacity goes."""
    best: dict[str, tools.WrkResult] = {}
    cpu: dict[str, float] = {}
    for _ in range(WRK_ROUNDS):
        for name, target in targets.items():
            pids = tools.process_tree(target.pid)
            tools.wrk(target.url, seconds=WRK_WARMUP_SECONDS, connections=WRK_CONNECTIONS)
            before = tools.cpu_seconds(pids)
            result = tools.wrk(target.url, seconds=WRK_SECONDS, connections=WRK_CONNECTIONS)
            per_request = (tools.cpu_seconds(pids) - before) / max(1, result.requests)
            if result.bad_responses:
                raise RuntimeError(f"{name}: {result.bad_responses} failed responses under wrk")
            if name not in best or result.requests_per_s > best[name].requests_per_s:
                best[name] = result
            cpu[name] = min(cpu.get(name, per_request), per_request)
    for name, result in best.items():
        report.figure(f"gateway.get_1k.{name}.rps", result.requests_per_s, "req/s")
        report.figure(f"gateway.get_1k.{name}.p50", result.latency_p50_ms, "ms")
        report.figure(f"gateway.get_1k.{name}.p99", result.latency_p99_ms, "ms")
        report.figure(f"gateway.get_1k.{name}.cpu_per_request", cpu[name] * 1e6, "us")
    ours = best["node"].requests_per_s
    report.ratio("gateway.get_1k.vs_nginx", ours, best["nginx"].requests_per_s, 0.25)
    report.ratio("gateway.get_1k.vs_staticfiles", ours, best["staticfiles"].requests_per_s, 1.0)


# --- 256 MiB PUT ------------------------------------------------------------------------


def _puts(report: Report, node: tools.Node, big: Path, tmp: Path) -> tuple[str, int]:
    """PUT fresh 256 MiB bodies; returns the first one's address (the same bytes nginx
    serves) and the tree's peak RSS while ingesting."""
    source = tmp / "put.bin"
    _copy(big, source)
    seen: set[str] = set()
    put_rates: list[float] = []
    hash_rates: list[float] = []
    disk_rates: list[float] = []
    wire_rates: list[float] = []
    first = ""
    with tools.discard_server() as sink, _peak_rss(node.pid) as peak:
        for i in range(PUTS):
            if i:  # fresh content: a new prefix, so a new address and a new bundle
                with open(source, "r+b") as f:
                    f.write(os.urandom(32))
            hash_rates.append(_blake3_rate(source))
            result = tools.curl_upload(f"{node.http}/put", source, headers=node.auth)
            if result.status != 201:
                raise RuntimeError(f"PUT answered {result.status}: {result.body[:200]}")
            addr = _json_address(result.body)
            if addr in seen:
                raise RuntimeError("a PUT repeated content that was already stored")
            seen.add(addr)
            first = first or addr
            put_rates.append(result.mb_per_s(BIG))
            disk_rates.append(_durable_write_rate(source, node.data_dir / "tmp"))
            wire_rates.append(tools.curl_upload(sink, source).mb_per_s(BIG))
    ours = max(put_rates)
    report.figure("gateway.put_256m.node", ours, "MB/s")
    report.figure("gateway.put_256m.node_median", statistics.median(put_rates), "MB/s")
    report.figure("gateway.put_256m.blake3_one_process", max(hash_rates), "MB/s")
    report.figure("gateway.put_256m.disk_write_fsync", max(disk_rates), "MB/s")
    report.ratio("gateway.put_256m.vs_blake3", ours, max(hash_rates), 0.5)
    report.figure("gateway.put_256m.curl_to_discard_server", max(wire_rates), "MB/s")
    report.ratio("gateway.put_256m.vs_disk_write_fsync", ours, max(disk_rates))
    report.ratio("gateway.put_256m.vs_curl_to_discard_server", ours, max(wire_rates))
    return first, peak.value


def _blake3_rate(path: Path) -> float:
    """MB/s of BLAKE3 over the file in this process (1 MiB reads, one hashing thread)."""
    hasher = blake3.blake3()
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        while chunk := f.read(tools.MiB):
            hasher.update(chunk)
    hasher.hexdigest()
    return BIG / (time.perf_counter() - t0) / 1e6


def _durable_write_rate(source: Path, directory: Path) -> float:
    """MB/s of copying the file to the node's disk and fsyncing it: what any durable
    PUT must pay at least once."""
    target = directory / "bench-disk-probe"
    t0 = time.perf_counter()
    try:
        with open(source, "rb") as src, open(target, "wb") as dst:
            while chunk := src.read(tools.MiB):
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        return BIG / (time.perf_counter() - t0) / 1e6
    finally:
        target.unlink(missing_ok=True)


# --- 256 MiB GET ------------------------------------------------------------------------


def _big_gets(report: Report, node: tools.Node, addr: str, nginx_url: str) -> int:
    """Cold (verifying) then warm GETs vs nginx; returns the tree's peak RSS."""
    store = ObjectStore(node.data_dir)
    address = parse_address(addr)
    payload = store.bundle_dir(address) / "payload.bin"
    url = f"{node.http}/o/{addr}"
    # Invalidate the verified record the PUT left, the way any rewrite would: a new
    # mtime. The bytes stay in the page cache: "cold" means unverified, not uncached.
    st = payload.stat()
    os.utime(payload, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    if store.is_verified(address.hex, payload.stat()):
        raise RuntimeError("the verified record survived an mtime change")
    ours: list[float] = []
    theirs: list[float] = []
    with _peak_rss(node.pid) as peak:
        cold = _get_ok(url)
        if not store.is_verified(address.hex, payload.stat()):
            raise RuntimeError("a complete GET did not record the object as verified")
        for _ in range(BIG_GETS):
            theirs.append(_get_ok(nginx_url).mb_per_s(BIG))
            ours.append(_get_ok(url).mb_per_s(BIG))
    report.figure("gateway.get_256m.node_cold", cold.mb_per_s(BIG), "MB/s")
    report.figure("gateway.get_256m.node_warm", max(ours), "MB/s")
    report.figure("gateway.get_256m.nginx", max(theirs), "MB/s")
    report.ratio("gateway.get_256m.warm_vs_nginx", max(ours), max(theirs), 0.5)
    report.ratio("gateway.get_256m.cold_vs_nginx", cold.mb_per_s(BIG), max(theirs))
    return peak.value


def _get_ok(url: str) -> tools.CurlResult:
    result = tools.curl_get(url)
    if result.status != 200:
        raise RuntimeError(f"GET {url} answered {result.status}")
    return result


# --- memory ------------------------------------------------------------------------------


class _Peak:
    value = 0


@contextlib.contextmanager
def _peak_rss(root: int) -> Iterator[_Peak]:
    """Peak RSS of the node's tree over a block: the larger of the sampled peak and the
    (conservative) sum of per-process high-water marks, reset at the start."""
    peak = _Peak()
    sampler = tools.RssSampler(root)
    hwm = tools.reset_peak_rss(sampler.pids)
    try:
        with sampler:
            yield peak
    finally:
        bound = tools.peak_rss_sum(sampler.pids) if hwm else 0
        peak.value = max(sampler.peak, bound)


def _idle_rss(root: int) -> int:
    """The tree's RSS at rest: the median of a few samples a few ms apart."""
    pids = tools.process_tree(root)
    samples = []
    for _ in range(10):
        samples.append(tools.rss(pids))
        time.sleep(0.01)
    return int(statistics.median(samples))


def _memory(report: Report, idle: int, serve_peak: int, ingest_peak: int) -> None:
    mib = tools.MiB
    report.figure("gateway.mem.idle", idle / mib, "MiB")
    report.figure("gateway.mem.peak_serving_256m", serve_peak / mib, "MiB")
    report.figure("gateway.mem.peak_ingesting_256m", ingest_peak / mib, "MiB")
    delta = max(serve_peak, ingest_peak) - idle
    report.figure("gateway.mem.peak_delta", delta / mib, "MiB")
    # Higher is better, like every ratio: the budget over what was used (>= 1 is met).
    report.ratio("gateway.mem.budget_100MiB_over_delta", MEMORY_BUDGET, max(delta, mib), 1.0)


# --- files -------------------------------------------------------------------------------


def _write_random(path: Path, size: int) -> None:
    """Incompressible bytes, written in 8 MiB pieces (never held whole)."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * tools.MiB)
            f.write(os.urandom(n))
            left -= n


def _copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as s, open(dst, "wb") as d:
        left = src.stat().st_size
        while left:
            n = os.copy_file_range(s.fileno(), d.fileno(), left)
            if n == 0:
                raise OSError("short copy")
            left -= n


def _json_address(body: str) -> str:
    addr: str = json.loads(body)["address"]
    return addr
