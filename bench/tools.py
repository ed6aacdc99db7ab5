"""What the benchmarks share: servers to compare against, load generators, memory probes.

Every server here binds port 0 (or a port the kernel just handed out), runs as a child
process of the benchmark, and is stopped by the context manager that started it, so a
benchmark that fails halfway leaves nothing behind. Baselines are public tools (nginx,
wrk, curl) installed from the distribution's packages when missing.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
RON = str(Path(sys.executable).with_name("ron"))
PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")
MiB = 1024 * 1024

# The Debian package that provides each command the benchmarks run.
_PACKAGES = {"wrk": "wrk", "nginx": "nginx", "curl": "curl"}
_SBIN = ("/usr/sbin", "/sbin")


# --- tools --------------------------------------------------------------------------


def which(command: str) -> str | None:
    """``shutil.which`` that also looks in sbin (nginx lives there; PATH may omit it)."""
    found = shutil.which(command)
    if found:
        return found
    for d in _SBIN:
        candidate = Path(d) / command
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ensure_tools(*commands: str) -> dict[str, str]:
    """Install the distribution packages for missing commands; returns command -> path.

    Runs ``apt-get update`` once before installing (a fresh machine's package lists
    may be empty). Raises when a command is still missing afterwards.
    """
    missing = [c for c in commands if which(c) is None]
    if missing:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        print(f"installing {' '.join(_PACKAGES[c] for c in missing)} ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *(_PACKAGES[c] for c in missing)],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    paths = {}
    for c in commands:
        path = which(c)
        if path is None:
            raise RuntimeError(f"{c} is not installed and could not be installed")
        paths[c] = path
    return paths


# --- waiting and ports -------------------------------------------------------------


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it is true; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1 (for servers that cannot take a
    socket from us, like nginx; a tiny race with other binders is possible)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# --- servers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A baseline server we started: its base URL and root process id."""

    url: str
    pid: int


@dataclass
class Node:
    """A node started with ``ron up``: its URLs, root process id and data dir."""

    proc: subprocess.Popen[bytes]
    urls: dict[str, str]
    data_dir: Path

    @property
    def http(self) -> str:
        return self.urls["http"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def token(self) -> str:
        """The owner capability token ``ron up`` wrote (writes and mailbox calls need it)."""
        return (self.data_dir / "auth" / "owner.token").read_text().strip()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@contextlib.contextmanager
def ron_node(workdir: Path, env: dict[str, str] | None = None) -> Iterator[Node]:
    """``ron up`` on port 0 for every listener, as a user starts it; yields once it
    printed its ``ready`` line. Logs go to ``workdir/node.log``."""
    data_dir = workdir / "data"
    args = [RON, "up", "--data-dir", str(data_dir)]
    args += ["--admin", "127.0.0.1:0", "--http", "127.0.0.1:0", "--oap", "127.0.0.1:0"]
    with open(workdir / "node.log", "wb") as log:
        proc = subprocess.Popen(
            args,
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, **(env or {})},
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        if not line.startswith("ready "):
            tail = (workdir / "node.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"node did not become ready: {line!r}\n{tail}")
        urls = dict(item.split("=", 1) for item in line.split()[1:])
        yield Node(proc, urls, data_dir)
    finally:
        _stop(proc)


_NGINX_CONF = """\
daemon off;
master_process on;
{user}
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


@contextlib.contextmanager
def nginx(root: Path, workdir: Path) -> Iterator[Server]:
    """nginx serving ``root`` as static files (its stock tuning: one worker per core,
    sendfile, no access log)."""
    binary = ensure_tools("nginx")["nginx"]
    conf_dir = workdir / "nginx"
    conf_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = conf_dir / "nginx.conf"
    # Started as root, nginx drops its workers to "nobody", who may not read our
    # private temp dir: keep them as the user running the benchmark.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    conf.write_text(_NGINX_CONF.format(user=user, dir=conf_dir, port=port, root=root))
    with open(conf_dir / "stderr.log", "wb") as err:
        proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(conf_dir)], stdout=err, stderr=err
        )
    try:
        wait_for(lambda: accepts(port) or proc.poll() is not None, 10, "nginx to listen")
        if proc.poll() is not None:
            raise RuntimeError((conf_dir / "stderr.log").read_text(errors="replace"))
        yield Server(f"http://127.0.0.1:{port}", proc.pid)
    finally:
        _stop(proc, signal.SIGQUIT)  # graceful: workers finish, then the master exits


@contextlib.contextmanager
def starlette_static(root: Path) -> Iterator[Server]:
    """A plain Starlette ``StaticFiles`` app on uvicorn (httptools, uvloop) serving
    ``root``.

    It binds host and port itself: uvicorn takes an inherited fd for a Unix socket, and
    TCP connections accepted that way never get TCP_NODELAY (40 ms delayed-ACK stalls).
    """
    port = free_port()
    code = (
        "import sys, uvicorn\n"
        "from starlette.applications import Starlette\n"
        "from starlette.routing import Mount\n"
        "from starlette.staticfiles import StaticFiles\n"
        "app = Starlette(routes=[Mount('/', StaticFiles(directory=sys.argv[1]))])\n"
        "uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[2]), loop='uvloop',\n"
        "            http='httptools', access_log=False, log_level='warning')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(root), str(port)])
    try:
        wait_for(lambda: _http_ok(port) or proc.poll() is not None, 30, "uvicorn to serve")
        if proc.poll() is not None:
            raise RuntimeError("the StaticFiles server exited")
        yield Server(f"http://127.0.0.1:{port}", proc.pid)
    finally:
        _stop(proc)


def _http_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(16).startswith(b"HTTP/1.1")
    except OSError:
        return False


_CREATED = b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


@contextlib.contextmanager
def discard_server() -> Iterator[str]:
    """An HTTP sink on a thread: reads each request body into one reused buffer and
    answers 201. What curl can push through loopback to a server doing no work at all,
    the ceiling for any upload figure measured with the same client."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        buf = bytearray(MiB)
        view = memoryview(buf)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    piece = conn.recv(65536)
                    if not piece:
                        break
                    head += piece
                headers, _, got = head.partition(b"\r\n\r\n")
                length = 0
                for line in headers.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                left = length - len(got)
                while left > 0:
                    n = conn.recv_into(view)
                    if not n:
                        break
                    left -= n
                conn.sendall(_CREATED)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        listener.close()
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            pass
        thread.join(5)


# --- load generators -----------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    requests: int
    requests_per_s: float
    bytes_per_s: float
    latency_avg_ms: float
    latency_p50_ms: float
    latency_p99_ms: float
    bad_responses: int  # non-2xx/3xx plus socket errors: any is a broken benchmark


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}
_SIZES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:
        raise ValueError(f"unparsed wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> WrkResult:
    """Requests/s, transfer rate and latency (avg, p50, p99) from ``wrk --latency``."""

    def grab(pattern: str) -> re.Match[str]:
        m = re.search(pattern, out, re.MULTILINE)
        if m is None:
            raise ValueError(f"wrk output lacks {pattern!r}:\n{out}")
        return m

    rate = grab(r"^Transfer/sec:\s+([\d.]+)(\w+)")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    bad = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(g) for g in errors.groups()) if errors else 0
    )
    return WrkResult(
        requests=int(grab(r"^\s+(\d+) requests in")[1]),
        requests_per_s=float(grab(r"^Requests/sec:\s+([\d.]+)")[1]),
        bytes_per_s=float(rate[1]) * _SIZES[rate[2]],
        latency_avg_ms=_ms(grab(r"^\s+Latency\s+(\S+)")[1]),
        latency_p50_ms=_ms(grab(r"^\s+50%\s+(\S+)")[1]),
        latency_p99_ms=_ms(grab(r"^\s+99%\s+(\S+)")[1]),
        bad_responses=bad,
    )


def wrk(url: str, *, seconds: float, connections: int = 4, threads: int = 1) -> WrkResult:
    """Run wrk against ``url`` for a bounded time on loopback."""
    binary = ensure_tools("wrk")["wrk"]
    out = subprocess.run(
        [
            binary,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "--latency",
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    return parse_wrk(out)


@dataclass(frozen=True)
class CurlResult:
    status: int
    seconds: float
    body: str  # only when the body went to a file we read back (small JSON replies)

    def mb_per_s(self, nbytes: int) -> float:
        return nbytes / self.seconds / 1e6


def curl_get(url: str) -> CurlResult:
    """GET ``url`` discarding the body; curl's own clock, from connect to last byte."""
    binary = ensure_tools("curl")["curl"]
    out = subprocess.run(
        [binary, "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", url],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout.split()
    return CurlResult(int(out[0]), float(out[1]), "")


def curl_upload(
    url: str,
    path: Path,
    content_type: str = "application/octet-stream",
    headers: dict[str, str] | None = None,
) -> CurlResult:
    """POST a file's bytes, streamed from disk (``-T``; ``--data-binary @`` would read it
    whole into memory first) and without an ``Expect: 100-continue`` round trip."""
    binary = ensure_tools("curl")["curl"]
    marker = "\n@@curl@@ "
    out = subprocess.run(
        [
            binary,
            "-sS",
            "-X",
            "POST",
            "-T",
            str(path),
            "-H",
            "Expect:",
            "-H",
            f"Content-Type: {content_type}",
            *(arg for k, v in (headers or {}).items() for arg in ("-H", f"{k}: {v}")),
            "-w",
            marker + "%{http_code} %{time_total}",
            url,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    body, _, tail = out.rpartition(marker)
    code, total = tail.split()
    return CurlResult(int(code), float(total), body)


# --- memory ----------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # Field 4 (ppid) comes after the parenthesised command, which may hold spaces.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def process_tree(root: int) -> list[int]:
    """``root`` and every descendant that is alive now."""
    kids = _children()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def rss(pids: Sequence[int]) -> int:
    """Resident bytes of ``pids`` summed, at (nearly) one instant."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            continue
    return total


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time consumed so far by ``pids``, summed."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / _TICKS


def reset_peak_rss(pids: Sequence[int]) -> bool:
    """Reset each process's high-water mark (VmHWM); False when the kernel refuses."""
    ok = True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


def peak_rss_sum(pids: Sequence[int]) -> int:
    """Sum of each process's VmHWM: an upper bound on the tree's peak (the processes
    may have peaked at different moments)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


class RssSampler:
    """Samples a process tree's summed RSS on a thread; ``peak`` is the largest seen.

    Polling can miss a spike shorter than the interval, so callers pair it with the
    VmHWM bound from :func:`peak_rss_sum`.
    """

    def __init__(self, root: int, interval: float = 0.005) -> None:
        self.pids = process_tree(root)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pids))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss(self.pids))
