"""Mailbox throughput: full send -> receive -> ack cycles, against Redis Streams.

One producer process and one consumer process run at the same time for a fixed
window; the figure is messages acknowledged per second (a message counts once its ACK
was answered). Payloads are 1 KiB of random bytes. Two shapes:

- one message per request (SEND one, RECV max 1, ACK one);
- batches of 10 (one batch SEND, RECV max 10, one ACK of 10 receipts);
- batches of 10 with each batch's ACK carried by the next RECV (``"ack"`` in the
  receive body; one round trip per consumer cycle), against Redis with the ``XACK``
  pipelined with the next ``XREADGROUP`` (the same single round trip). Reported beside
  the target, not instead of it: the target is judged on the separate calls above.

Ours: the node as ``ron up`` starts it, through the HTTP API (``/v1/mailbox/...``),
durable SQLite in WAL mode with its default ``synchronous=normal``; driven with the
project's SDK client (``ron.sdk.client.Client``, the figure the issue's target applies
to: "with the project's client"; its sends carry idempotency keys, as every SDK send
does), and once more with a bare keep-alive HTTP/1.1 client from the standard library
(``http.client``), in the same alternating rounds. The SDK runs the target shape only
when it is importable; the bare client's figure then carries the target.

Redis: ``redis-server`` from the distribution's packages, started here on a free port
with ``appendonly yes`` and ``appendfsync everysec`` (the same durability class:
survives a process crash, may lose about a second on power loss), driven with redis-py:
``XADD`` (pipelined for a batch), ``XREADGROUP COUNT n``, ``XACK``.

The floor (batch 10 only): ``bench/mailbox_floor.py``, a bare httptools server over the
node's own store (the same shared SQLite file and transactions, nothing around them:
no authentication, quotas, metrics or validation), driven by a raw-socket client that
does what the SDK does on the wire (keyed batch sends, JSON, base64), with the producer
and the consumer on separate server processes as the gateway's balanced listener puts
them. Its ratio to Redis is the ceiling of any Python front end over this store here;
reported beside the target, never instead of it. Once more with the store swapped for a
queue in the server's memory (one process serving both; nothing durable): what the same
front end costs without the durable store.

redis-py is installed into the running venv when missing; it is a benchmark-only
dependency, not a runtime one. The machine is shared and drifts, so each figure is the
best of a few short rounds and the two systems are measured in alternation.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import multiprocessing
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import tools
from report import Report

PAYLOAD = 1024
WINDOW_S = 3.5
WARMUP_S = 0.5
ROUNDS = 2
TOPIC = "bench"
# One client hammering the node is what the default anonymous quota exists to stop
# (429); lift it so the benchmark measures the mailbox, not the policy.
NODE_ENV = {
    "RON_GATEWAY__QUOTA__RPS": "1e12",
    "RON_GATEWAY__QUOTA__BURST": "1e12",
    "RON_GATEWAY__QUOTA__BYTES_PER_S": "1e15",
    "RON_GATEWAY__QUOTA__BYTES_BURST": "1e15",
}


def run(report: Report) -> None:
    _ensure_redis()
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ron-bench-mailbox-") as tmp:
        work = Path(tmp)
        (work / "node").mkdir()
        (work / "redis").mkdir()
        with (
            contextlib.ExitStack() as stack,
            tools.ron_node(work / "node", env=NODE_ENV) as node,
            redis_server(work / "redis") as port,
        ):
            host, http_port = node.http.removeprefix("http://").rsplit(":", 1)
            ours = (host, int(http_port), node.token)
            sdk_target = (node.http, node.token) if _sdk_available() else None
            floor = stack.enter_context(floor_servers(work / "floor"))
            in_memory = stack.enter_context(floor_servers(work / "memory", memory=True))
            shapes = (
                (1, "single", ours_consumer, redis_consumer, sdk_consumer),
                (10, "batch10", ours_consumer, redis_consumer, sdk_consumer),
                (10, "batch10_ack_on_receive", ours_acking, redis_pipelined, sdk_acking),
            )
            for batch, label, ours_c, redis_c, sdk_c in shapes:
                best_ours = best_redis = best_sdk = best_floor = best_memory = 0.0
                for _ in range(ROUNDS):
                    best_ours = max(best_ours, measure(ours_producer, ours_c, ours, batch))
                    best_redis = max(best_redis, measure(redis_producer, redis_c, port, batch))
                    if sdk_target is not None:
                        best_sdk = max(best_sdk, measure(sdk_producer, sdk_c, sdk_target, batch))
                    if label == "batch10":
                        best_floor = max(
                            best_floor, measure(floor_producer, floor_consumer, floor, batch)
                        )
                        best_memory = max(
                            best_memory,
                            measure(floor_producer, floor_consumer, in_memory, batch),
                        )
                figures[f"ours_{label}"] = best_ours
                figures[f"redis_{label}"] = best_redis
                if sdk_target is not None:
                    figures[f"sdk_{label}"] = best_sdk
                if label == "batch10":
                    figures["floor_batch10"] = best_floor
                    figures["memory_batch10"] = best_memory
    for label in ("single", "batch10", "batch10_ack_on_receive"):
        ours, redis = figures[f"ours_{label}"], figures[f"redis_{label}"]
        target = 0.5 if label == "batch10" else None
        with_sdk = f"sdk_{label}" in figures
        report.figure(f"mailbox_{label}_ron_msgs_per_s", ours, "msg/s")
        report.figure(f"mailbox_{label}_redis_streams_msgs_per_s", redis, "msg/s")
        report.ratio(f"mailbox_{label}_vs_redis_streams", ours, redis, None if with_sdk else target)
        if with_sdk:
            sdk = figures[f"sdk_{label}"]
            report.figure(f"mailbox_{label}_ron_sdk_client_msgs_per_s", sdk, "msg/s")
            report.ratio(f"mailbox_{label}_sdk_client_vs_redis_streams", sdk, redis, target)
        if label == "batch10":
            floor = figures["floor_batch10"]
            report.figure("mailbox_batch10_python_floor_msgs_per_s", floor, "msg/s")
            report.ratio("mailbox_batch10_python_floor_vs_redis_streams", floor, redis)
            memory = figures["memory_batch10"]
            report.figure("mailbox_batch10_python_floor_in_memory_msgs_per_s", memory, "msg/s")
            report.ratio("mailbox_batch10_python_floor_in_memory_vs_redis_streams", memory, redis)


# --- harness -------------------------------------------------------------------------

Worker = Callable[[Any, int, float, float, Connection], None]


def measure(producer: Worker, consumer: Worker, target: Any, batch: int) -> float:
    """Run one producer and one consumer process for the window; messages acked per s
    between the end of the warm-up and the end of the window."""
    ctx = multiprocessing.get_context("fork")
    start = time.monotonic() + 0.3  # both processes are up before the clock starts
    end = start + WINDOW_S
    results = []
    procs = []
    for work in (consumer, producer):
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=work, args=(target, batch, start, end, send))
        proc.start()
        send.close()
        procs.append(proc)
        results.append(recv)
    counted = results[0].recv()
    for proc in procs:
        proc.join(30)
    return float(counted) / (WINDOW_S - WARMUP_S)


def _payloads(n: int = 64) -> list[bytes]:
    return [os.urandom(PAYLOAD) for _ in range(n)]


class _Http:
    """A keep-alive HTTP/1.1 connection that reconnects when the server closes it."""

    def __init__(self, target: tuple[str, int, str]) -> None:
        host, port, token = target
        self._address = (host, port)
        self._auth = f"Bearer {token}"
        self._conn = http.client.HTTPConnection(host, port, timeout=30)

    def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        headers = {"Content-Type": content_type, "Authorization": self._auth}
        for attempt in (0, 1):
            try:
                self._conn.request("POST", path, body=body, headers=headers)
                reply = self._conn.getresponse()
                return reply.status, reply.read()
            except (http.client.HTTPException, OSError):
                self._conn.close()
                self._conn = http.client.HTTPConnection(*self._address, timeout=30)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def ours_producer(
    address: tuple[str, int, str], batch: int, start: float, end: float, out: Connection
) -> None:
    http_ = _Http(address)
    pool = _payloads()
    i = 0
    _sleep_until(start)
    while time.monotonic() < end:
        if batch == 1:
            status, _ = http_.post(
                f"/v1/mailbox/{TOPIC}/messages", pool[i % len(pool)], "application/octet-stream"
            )
        else:
            msgs = [
                {"payload_b64": base64.b64encode(pool[(i + j) % len(pool)]).decode()}
                for j in range(batch)
            ]
            body = json.dumps({"messages": msgs}).encode()
            status, _ = http_.post(f"/v1/mailbox/{TOPIC}/batch", body, "application/json")
        if status != 201:
            raise RuntimeError(f"send answered {status}")
        i += batch
    out.send(i)


def ours_consumer(
    address: tuple[str, int, str], batch: int, start: float, end: float, out: Connection
) -> None:
    http_ = _Http(address)
    counted = 0
    ask = json.dumps({"max": batch, "wait_s": 1}).encode()
    _sleep_until(start)
    while (now := time.monotonic()) < end:
        status, body = http_.post(f"/v1/mailbox/{TOPIC}/receive", ask, "application/json")
        if status != 200:
            raise RuntimeError(f"receive answered {status}")
        receipts = [m["receipt"] for m in json.loads(body)["messages"]]
        if not receipts:
            continue
        status, _ = http_.post(
            "/v1/mailbox/ack", json.dumps({"receipts": receipts}).encode(), "application/json"
        )
        if status != 200:
            raise RuntimeError(f"ack answered {status}")
        if time.monotonic() >= start + WARMUP_S and now < end:
            counted += len(receipts)
    out.send(counted)
    _drain_ours(http_, batch)


def ours_acking(
    address: tuple[str, int, str], batch: int, start: float, end: float, out: Connection
) -> None:
    """The consumer with each batch's ACK carried by the next receive."""
    http_ = _Http(address)
    counted = 0
    receipts: list[str] = []
    _sleep_until(start)
    while (now := time.monotonic()) < end:
        ask: dict[str, Any] = {"max": batch, "wait_s": 1}
        if receipts:
            ask["ack"] = receipts
        status, body = http_.post(
            f"/v1/mailbox/{TOPIC}/receive", json.dumps(ask).encode(), "application/json"
        )
        if status != 200:
            raise RuntimeError(f"receive answered {status}")
        reply = json.loads(body)
        if time.monotonic() >= start + WARMUP_S and now < end:
            counted += reply.get("acked", 0)
        receipts = [m["receipt"] for m in reply["messages"]]
    out.send(counted)
    if receipts:
        http_.post(
            "/v1/mailbox/ack", json.dumps({"receipts": receipts}).encode(), "application/json"
        )
    _drain_ours(http_, batch)


def _drain_ours(http_: _Http, batch: int) -> None:
    """Ack what the producer left behind, so the next round starts from an empty topic."""
    ask = json.dumps({"max": 100}).encode()
    while True:
        _, body = http_.post(f"/v1/mailbox/{TOPIC}/receive", ask, "application/json")
        receipts = [m["receipt"] for m in json.loads(body)["messages"]]
        if not receipts:
            return
        http_.post(
            "/v1/mailbox/ack", json.dumps({"receipts": receipts}).encode(), "application/json"
        )


def _sdk_available() -> bool:
    try:
        from ron.sdk.client import Client  # noqa: F401
    except ImportError:
        return False
    return True


def sdk_producer(
    target: tuple[str, str], batch: int, start: float, end: float, out: Connection
) -> None:
    from ron.sdk.client import Client

    pool = _payloads()
    i = 0
    url, token = target
    with Client(url, cap=token) as client:
        _sleep_until(start)
        while time.monotonic() < end:
            if batch == 1:
                client.send(TOPIC, pool[i % len(pool)])
            else:
                client.send_batch(TOPIC, [pool[(i + j) % len(pool)] for j in range(batch)])
            i += batch
    out.send(i)


def sdk_consumer(
    target: tuple[str, str], batch: int, start: float, end: float, out: Connection
) -> None:
    from ron.sdk.client import Client

    counted = 0
    url, token = target
    with Client(url, cap=token) as client:
        _sleep_until(start)
        while (now := time.monotonic()) < end:
            got = client.receive(TOPIC, max=batch, wait_s=1)
            if not got:
                continue
            client.ack(got)
            if time.monotonic() >= start + WARMUP_S and now < end:
                counted += len(got)
        out.send(counted)
        while got := client.receive(TOPIC, max=100):
            client.ack(got)


def sdk_acking(
    target: tuple[str, str], batch: int, start: float, end: float, out: Connection
) -> None:
    from ron.sdk.client import Client

    counted = 0
    url, token = target
    got: list[Any] = []
    with Client(url, cap=token) as client:
        _sleep_until(start)
        while (now := time.monotonic()) < end:
            acked = len(got)
            got = client.receive(TOPIC, max=batch, wait_s=1, ack=got)
            if time.monotonic() >= start + WARMUP_S and now < end:
                counted += acked
        out.send(counted)
        if got:
            client.ack(got)
        while got := client.receive(TOPIC, max=100):
            client.ack(got)


# --- the floor: bench/mailbox_floor.py ---------------------------------------------------


@contextlib.contextmanager
def floor_servers(workdir: Path, memory: bool = False) -> Iterator[tuple[int, int]]:
    """The file's owner and two serving processes; yields (producer's, consumer's) port.
    ``memory``: one process with its queue in memory serves both."""
    workdir.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).resolve().parent / "mailbox_floor.py"
    procs: list[subprocess.Popen[str]] = []
    ports: list[int] = []
    try:
        for role in ("memory",) if memory else ("owner", "serve", "serve"):
            proc = subprocess.Popen(
                [sys.executable, str(script), str(workdir / "floor.db"), role],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()  # blocks until it is up (or died)
            if not line:
                raise RuntimeError(f"the floor's {role} process exited")
            if role != "owner":
                ports.append(int(line))
        yield ports[0], ports[-1]
    finally:
        for proc in reversed(procs):
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in reversed(procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class _Raw:
    """A keep-alive HTTP/1.1 client on a bare socket: one write per request, the
    answer read by Content-Length (all the floor server sends)."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()

    def post(self, path: bytes, body: bytes) -> bytes:
        sock, buf = self._sock, self._buf
        sock.sendall(
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path, len(body), body)
        )
        while (end := buf.find(b"\r\n\r\n")) < 0:
            buf += _recv(sock)
        length = 0
        for line in bytes(buf[:end]).split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        del buf[: end + 4]
        while len(buf) < length:
            buf += _recv(sock)
        reply = bytes(buf[:length])
        del buf[:length]
        return reply

    def close(self) -> None:
        self._sock.close()


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("the floor server closed the connection")
    return data


def floor_producer(
    ports: tuple[int, int], batch: int, start: float, end: float, out: Connection
) -> None:
    client = _Raw(ports[0])
    pool = _payloads()
    i = 0
    _sleep_until(start)
    while time.monotonic() < end:
        stem = secrets.token_hex(16)  # keyed, one stem per batch, as the SDK's sends
        msgs = [
            {
                "payload_b64": base64.b64encode(pool[(i + j) % len(pool)]).decode(),
                "headers": {},
                "idempotency_key": f"sdk-{stem}-{j}",
            }
            for j in range(batch)
        ]
        client.post(b"/batch", json.dumps({"messages": msgs}).encode())
        i += batch
    client.close()
    out.send(i)


def floor_consumer(
    ports: tuple[int, int], batch: int, start: float, end: float, out: Connection
) -> None:
    client = _Raw(ports[1])
    counted = 0
    _sleep_until(start)
    while (now := time.monotonic()) < end:
        got = [
            (m["msg_id"], m["receipt"], base64.b64decode(m["payload_b64"]), m["headers"])
            for m in json.loads(client.post(b"/receive", b"{}"))["messages"]
        ]
        if not got:
            continue
        client.post(b"/ack", json.dumps({"receipts": [m[1] for m in got]}).encode())
        if time.monotonic() >= start + WARMUP_S and now < end:
            counted += len(got)
    out.send(counted)
    while got := json.loads(client.post(b"/receive", b"{}"))["messages"]:
        client.post(b"/ack", json.dumps({"receipts": [m["receipt"] for m in got]}).encode())
    client.close()


def redis_producer(port: int, batch: int, start: float, end: float, out: Connection) -> None:
    import redis

    r = redis.Redis(port=port)
    pool = _payloads()
    i = 0
    _sleep_until(start)
    while time.monotonic() < end:
        if batch == 1:
            r.xadd(TOPIC, {"p": pool[i % len(pool)]})
        else:
            pipe = r.pipeline(transaction=False)
            for j in range(batch):
                pipe.xadd(TOPIC, {"p": pool[(i + j) % len(pool)]})
            pipe.execute()
        i += batch
    out.send(i)


def redis_consumer(port: int, batch: int, start: float, end: float, out: Connection) -> None:
    import redis

    r = redis.Redis(port=port)
    counted = 0
    _sleep_until(start)
    while (now := time.monotonic()) < end:
        got = r.xreadgroup("g", "c", {TOPIC: ">"}, count=batch, block=1000)
        if not got:
            continue
        ids = [entry[0] for entry in got[0][1]]
        r.xack(TOPIC, "g", *ids)
        if time.monotonic() >= start + WARMUP_S and now < end:
            counted += len(ids)
    out.send(counted)
    r.delete(TOPIC)  # the next round starts from an empty stream (and a new group)
    r.xgroup_create(TOPIC, "g", id="0", mkstream=True)


def redis_pipelined(port: int, batch: int, start: float, end: float, out: Connection) -> None:
    """The consumer with each batch's XACK pipelined with the next XREADGROUP."""
    import redis

    r = redis.Redis(port=port)
    counted = 0
    ids: list[Any] = []
    _sleep_until(start)
    while (now := time.monotonic()) < end:
        pipe = r.pipeline(transaction=False)
        if ids:
            pipe.xack(TOPIC, "g", *ids)
        pipe.xreadgroup("g", "c", {TOPIC: ">"}, count=batch, block=1000)
        replies = pipe.execute()
        if ids and time.monotonic() >= start + WARMUP_S and now < end:
            counted += int(replies[0])
        got = replies[-1]
        ids = [entry[0] for entry in got[0][1]] if got else []
    out.send(counted)
    if ids:
        r.xack(TOPIC, "g", *ids)
    r.delete(TOPIC)  # the next round starts from an empty stream (and a new group)
    r.xgroup_create(TOPIC, "g", id="0", mkstream=True)


def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)  # a start line shared by two processes, not synchronisation


# --- redis -----------------------------------------------------------------------------


def _ensure_redis() -> None:
    """redis-server from the distribution's packages, redis-py into this venv."""
    if shutil.which("redis-server") is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        print("installing redis-server ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "redis-server"],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    try:
        import redis  # noqa: F401
    except ImportError:
        print("installing redis-py into the venv (benchmark only) ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "redis==8.1.0"], check=True)


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[int]:
    """redis-server on a free port, AOF on with fsync every second; yields the port."""
    import redis

    port = tools.free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return proc.poll() is not None

        tools.wait_for(up, 10, "redis-server to answer")
        if proc.poll() is not None:
            raise RuntimeError("redis-server exited")
        client.xgroup_create(TOPIC, "g", id="0", mkstream=True)
        client.close()
        yield port
    finally:
        proc.terminate()
        proc.wait(30)
