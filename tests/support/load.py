"""Mixed client load against one running node, and a ledger of what the node promised.

The chaos drill (``support.chaos``) and the soak (``support.soak``) drive the same
workload; only the pace and what happens around it differ. Every client goes through the
SDK (``Client`` over HTTP, ``OapClient`` over OAP/1) with its retries, as an application
would, and presents the owner token, so the load works whether or not the node enforces
capabilities.

The point of the ledger is that "it kept running" is not enough: the node made promises
(a 201 for a PUT, a 201 for a send, a 200 for an ack) and at the end each one is checked:

- every object whose PUT got 201 is readable and hashes to its address;
- every message whose send got 201 was received, under the ``msg_id`` that send was
  given (an idempotent retry never stores a second copy);
- no message is delivered by a receive that started after its ack was answered 200;
- no byte that came back failed verification: object bodies over HTTP and OAP are hashed
  against their address, message payloads carry the BLAKE3 of their body.

A broken promise is a *violation*; a request that failed after the client's retries is
only an *error* (an outage the client saw, counted for availability, never a data loss).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import blake3

from ron.proto.envelope import ErrorCode, RonError
from ron.proto.oap import AppId
from ron.sdk import (
    Client,
    Conflict,
    IntegrityError,
    Message,
    NotFound,
    OapClient,
    RetryEvent,
    RetryPolicy,
    RonClientError,
)
from support.node import RunningNode
from support.stats import percentile
from support.waiting import wait_until_sync

KiB = 1024
MiB = 1024 * KiB

PUT, GET, SEND, RECEIVE, ACK, OAP_GET = "put", "get", "send", "receive", "ack", "oap_get"
KINDS = (PUT, GET, SEND, RECEIVE, ACK, OAP_GET)

# The broken promises, by name (see the module docstring).
CORRUPT = "corrupt"  # bytes that failed verification reached a client
MISSING = "missing"  # an object whose PUT got 201 was answered 404 or could not be read
LOST = "lost"  # a send answered 201 was never received
REDELIVERED = "redelivered_after_ack"  # a receive begun after a 200 ack returned the message
DUPLICATED = "duplicate_stored"  # one logical send (one idempotency key) stored twice
NOT_RECOVERED = "not_recovered"  # a killed service was not healthy again in time
UNDRAINED = "undrained"  # messages still queued after everything was received and acked

# One SDK call may retry through a whole service restart (backoff, READY, first probe).
CHAOS_RETRY = RetryPolicy(max_attempts=12, deadline_s=30.0, base_s=0.05, cap_s=2.0)


@dataclass
class LoadConfig:
    """Who does what, how fast. ``rates`` is operations per second per worker of a kind
    (put, get, send, oap_get); a kind not in it runs closed-loop, as fast as the node
    answers. Receivers always run closed-loop on long-polls: they follow the senders."""

    topics: int = 3
    putters: int = 1
    getters: int = 1
    senders: int = 1
    oap_getters: int = 1
    receivers_per_topic: int = 1
    rates: dict[str, float] = field(default_factory=dict)
    visibility_s: float = 3.0
    max_small: int = 256 * KiB
    max_large: int = 2 * MiB
    large_share: float = 0.05
    max_message: int = 4 * KiB
    retry: RetryPolicy = CHAOS_RETRY
    seed: int | None = None


# What a node must be configured with for the ledger's checks to mean what they say.
NODE_CONFIG = """
[mailbox]
# A message whose deliveries keep ending without an ack (its receive's answer lost to a
# kill) must come back, not move to the dead-letter queue: that is a separate feature.
max_deliveries = 1000

[omnigate]
storage_rps = 100000.0
mailbox_rps = 100000.0
"""
NODE_ENV = {
    # The load is one tenant going flat out; quotas would turn it into 429s.
    "RON_GATEWAY__QUOTA__ENABLED": "false",
}


class Recorder:
    """Per-kind outcomes and latencies, shared by every worker thread.

    Latency is the whole call as the client saw it, retries included; for ``receive``
    it is per message, from the send's commit (``enqueued_ms``) to its delivery.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ok: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.errors: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
        self.latencies: dict[str, list[float]] = {k: [] for k in KINDS}
        self.retries = 0

    def success(self, kind: str, seconds: float | None) -> None:
        with self._lock:
            self.ok[kind] += 1
            if seconds is not None:
                self.latencies[kind].append(seconds)

    def sample(self, kind: str, seconds: float) -> None:
        with self._lock:
            self.latencies[kind].append(seconds)

    def failure(self, kind: str, code: str) -> None:
        with self._lock:
            self.failed[kind] += 1
            self.errors[kind][code] += 1

    def retried(self, event: RetryEvent) -> None:
        self.retried_once()

    def retried_once(self) -> None:
        with self._lock:
            self.retries += 1

    def ops(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            out: dict[str, dict[str, Any]] = {}
            for kind in KINDS:
                lat = self.latencies[kind]
                total = self.ok[kind] + self.failed[kind]
                out[kind] = {
                    "ok": self.ok[kind],
                    "failed": self.failed[kind],
                    "availability_pct": round(100 * self.ok[kind] / total, 3) if total else None,
                    "p50_ms": _ms(percentile(lat, 50)),
                    "p95_ms": _ms(percentile(lat, 95)),
                    "p99_ms": _ms(percentile(lat, 99)),
                    "errors": dict(self.errors[kind]),
                }
            return out

    def availability_pct(self) -> float | None:
        with self._lock:
            ok = sum(self.ok.values())
            total = ok + sum(self.failed.values())
        return round(100 * ok / total, 3) if total else None


def _ms(seconds: float) -> float | None:
    return None if seconds != seconds else round(seconds * 1000, 2)  # NaN: no samples


@dataclass
class _Sent:
    topic: str
    msg_id: str


class Ledger:
    """What the node promised, what the clients saw, and every promise found broken."""

    MAX_EXAMPLES = 20

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.objects: dict[str, int] = {}  # hex digest -> size, for PUTs answered 201
        self._object_list: list[str] = []  # the same keys, for O(1) random picks
        self.have_objects = threading.Event()
        self.sent: dict[str, _Sent] = {}  # send id -> where a 201 said it went
        self.received: dict[str, set[str]] = {}  # send id -> msg_ids it was delivered as
        self.acked: dict[str, float] = {}  # msg_id -> monotonic time its 200 ack arrived
        self.violations: Counter[str] = Counter()
        self.examples: list[str] = []
        self.stale_acks = 0

    def violation(self, kind: str, detail: str) -> None:
        with self._lock:
            self.violations[kind] += 1
            if len(self.examples) < self.MAX_EXAMPLES:
                self.examples.append(f"{kind}: {detail}")

    def stored(self, hex_digest: str, size: int) -> None:
        with self._lock:
            if hex_digest not in self.objects:
                self._object_list.append(hex_digest)
            self.objects[hex_digest] = size
        self.have_objects.set()

    def pick_object(self, rng: random.Random) -> tuple[str, int]:
        with self._lock:
            hex_digest = self._object_list[rng.randrange(len(self._object_list))]
            return hex_digest, self.objects[hex_digest]

    def record_send(self, send_id: str, topic: str, msg_id: str) -> None:
        with self._lock:
            self.sent[send_id] = _Sent(topic, msg_id)

    def record_delivery(self, send_id: str, msg_id: str, receive_began: float) -> None:
        with self._lock:
            acked_at = self.acked.get(msg_id)
            self.received.setdefault(send_id, set()).add(msg_id)
        if acked_at is not None and acked_at < receive_began:
            self.violation(REDELIVERED, f"{msg_id} was delivered after its ack completed")

    def record_acks(self, msg_ids: list[str], at: float) -> None:
        with self._lock:
            for msg_id in msg_ids:
                self.acked.setdefault(msg_id, at)

    def objects_snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.objects)

    def stale_ack(self) -> None:
        with self._lock:
            self.stale_acks += 1

    def unreceived(self) -> list[str]:
        with self._lock:
            return [sid for sid in self.sent if sid not in self.received]

    def check_messages(self) -> None:
        """Lost and duplicated sends, judged from everything received so far."""
        with self._lock:
            sent = dict(self.sent)
            received = {k: set(v) for k, v in self.received.items()}
        for send_id, s in sent.items():
            got = received.get(send_id)
            if not got:
                self.violation(LOST, f"send {send_id} ({s.msg_id} on {s.topic}) never arrived")
            elif got != {s.msg_id}:
                self.violation(DUPLICATED, f"send {send_id} is {s.msg_id} but came as {got}")
        for send_id, got in received.items():
            if send_id not in sent and len(got) > 1:
                self.violation(DUPLICATED, f"unconfirmed send {send_id} came as {got}")

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "objects_stored": len(self.objects),
                "sends_confirmed": len(self.sent),
                "sends_received": len(self.received),
                "messages_acked": len(self.acked),
                "stale_acks": self.stale_acks,
            }


def message_payload(send_id: str, body: bytes) -> bytes:
    """A payload that verifies itself: ``<send id>|<blake3 of body>|<body>``."""
    return f"{send_id}|{blake3.blake3(body).hexdigest()}|".encode() + body


def parse_payload(payload: bytes) -> tuple[str, bool]:
    """(send id, whether the body hashes to the digest in the payload)."""
    parts = payload.split(b"|", 2)
    if len(parts) != 3:
        return "", False
    send_id, digest, body = parts
    try:
        ok = blake3.blake3(body).hexdigest() == digest.decode("ascii")
        return send_id.decode("ascii"), ok
    except UnicodeDecodeError:
        return "", False


class Workload:
    """Worker threads that put, get, send, receive and ack over HTTP and get over OAP."""

    def __init__(self, node: RunningNode, config: LoadConfig | None = None) -> None:
        self.node = node
        self.config = config or LoadConfig()
        self.http_url = node.http
        self.oap_url = node.urls["oap"]
        self.ca_file = node.data_dir / "tls" / "ca.crt"
        self.token = node.token
        self.run_id = secrets.token_hex(4)
        self.topics = [f"load-{self.run_id}-{i}" for i in range(self.config.topics)]
        self.recorder = Recorder()
        self.ledger = Ledger()
        self._seed = self.config.seed if self.config.seed is not None else secrets.randbits(32)
        self._producing = threading.Event()  # set: producers stop
        self._consuming = threading.Event()  # set: receivers stop
        self._producers: list[threading.Thread] = []
        self._receivers: list[threading.Thread] = []
        self.crashed: list[str] = []  # workers that died of an unexpected exception
        self.verified_objects = 0

    # --- life cycle ---------------------------------------------------------------------

    def client(self) -> Client:
        return Client(
            self.http_url,
            cap=self.token,
            timeout=30.0,
            retry=self.config.retry,
            on_retry=self.recorder.retried,
        )

    def start(self) -> None:
        c = self.config
        plan: list[tuple[str, Callable[[int], None], int]] = [
            (PUT, self._putter, c.putters),
            (GET, self._getter, c.getters),
            (SEND, self._sender, c.senders),
            (OAP_GET, self._oap_getter, c.oap_getters),
        ]
        for kind, target, count in plan:
            for i in range(count):
                self._producers.append(self._thread(f"{kind}-{i}", target, i))
        for n in range(c.receivers_per_topic * len(self.topics)):
            self._receivers.append(self._thread(f"receive-{n}", self._receiver, n))
        for t in (*self._producers, *self._receivers):
            t.start()

    def _thread(self, name: str, target: Callable[[int], None], index: int) -> threading.Thread:
        def run() -> None:
            try:
                target(index)
            except BaseException as exc:  # a bug in the driver must not pass silently
                self.crashed.append(f"{name}: {type(exc).__name__}: {exc}")
                raise

        return threading.Thread(target=run, name=f"load-{name}", daemon=True)

    def stop_producing(self) -> None:
        """Stop everything but the receivers, which still have messages to drain."""
        self._producing.set()
        for t in self._producers:
            t.join(120)

    def stop_receiving(self) -> None:
        self._consuming.set()
        for t in self._receivers:
            t.join(120)

    def drained(self, client: Client) -> bool:
        """Every confirmed send was received and no topic holds anything any more."""
        if self.ledger.unreceived():
            return False
        for topic in self.topics:
            try:
                stats = client.stats(topic)
            except RonClientError:
                return False
            if stats.depth or stats.in_flight or stats.delayed or stats.dlq_depth:
                return False
        return True

    def finish(self, drain_timeout_s: float) -> None:
        """Stop the load, let receivers drain every topic, then check every promise."""
        self.stop_producing()
        with self.client() as client:
            # Receivers keep working meanwhile; a deadline passing is judged below.
            with contextlib.suppress(AssertionError):
                wait_until_sync(lambda: self.drained(client), drain_timeout_s, "the drain")
            self.stop_receiving()
            self.ledger.check_messages()
            for topic in self.topics:
                with contextlib.suppress(RonClientError):
                    stats = client.stats(topic)
                    left = stats.depth + stats.in_flight + stats.delayed + stats.dlq_depth
                    if left:
                        self.ledger.violation(UNDRAINED, f"{topic}: {stats}")
            self.verify_objects(client)

    def verify_objects(self, client: Client) -> int:
        """Read back every object whose PUT got 201; returns how many verified."""
        verified = 0
        for hex_digest, size in self.ledger.objects_snapshot().items():
            try:
                data = client.get(f"b3:{hex_digest}")
            except IntegrityError as exc:
                self.ledger.violation(CORRUPT, f"final read of b3:{hex_digest}: {exc}")
                continue
            except RonClientError as exc:
                self.ledger.violation(MISSING, f"final read of b3:{hex_digest}: {exc!r}")
                continue
            if len(data) != size or blake3.blake3(data).hexdigest() != hex_digest:
                self.ledger.violation(CORRUPT, f"final read of b3:{hex_digest}: wrong bytes")
                continue
            verified += 1
        self.verified_objects = verified
        return verified

    # --- pacing ---------------------------------------------------------------------------

    def _paced(self, kind: str) -> Iterator[None]:
        """Yields once per operation until the producers are stopped; with a rate for
        ``kind``, spaces the operations on a fixed schedule (falling behind does not
        cause a burst to catch up)."""
        rate = self.config.rates.get(kind)
        interval = 1.0 / rate if rate else 0.0
        next_at = time.monotonic()
        while not self._producing.is_set():
            if interval:
                delay = next_at - time.monotonic()
                if delay > 0 and self._producing.wait(delay):
                    return
                next_at = max(next_at + interval, time.monotonic())
            yield

    def _rng(self, name: str, index: int) -> random.Random:
        return random.Random(f"{self._seed}-{name}-{index}")

    # --- workers --------------------------------------------------------------------------

    def _putter(self, index: int) -> None:
        rng = self._rng(PUT, index)
        c = self.config
        with self.client() as client:
            for _ in self._paced(PUT):
                if rng.random() < c.large_share:
                    size = rng.randint(c.max_small + 1, c.max_large)
                else:
                    size = rng.randint(1, c.max_small)
                data = rng.randbytes(size)
                began = time.monotonic()
                try:
                    addr = client.put(data)
                except IntegrityError as exc:  # the node stored other bytes than were sent
                    self.ledger.violation(CORRUPT, f"put of {size} bytes: {exc}")
                    self.recorder.failure(PUT, "integrity")
                    continue
                except RonClientError as exc:
                    self.recorder.failure(PUT, exc.code)
                    continue
                self.recorder.success(PUT, time.monotonic() - began)
                self.ledger.stored(addr.hex, size)

    def _getter(self, index: int) -> None:
        rng = self._rng(GET, index)
        with self.client() as client:
            for _ in self._paced(GET):
                if not self.ledger.have_objects.wait(0.5):
                    continue
                hex_digest, size = self.ledger.pick_object(rng)
                began = time.monotonic()
                try:
                    data = client.get(f"b3:{hex_digest}")
                except IntegrityError as exc:
                    self.ledger.violation(CORRUPT, f"get b3:{hex_digest}: {exc}")
                    self.recorder.failure(GET, "integrity")
                    continue
                except NotFound as exc:
                    self.ledger.violation(MISSING, f"get b3:{hex_digest}: {exc}")
                    self.recorder.failure(GET, exc.code)
                    continue
                except RonClientError as exc:
                    self.recorder.failure(GET, exc.code)
                    continue
                # The SDK verified already; check again here, independently of it.
                if len(data) != size or blake3.blake3(data).hexdigest() != hex_digest:
                    self.ledger.violation(CORRUPT, f"get b3:{hex_digest}: wrong bytes")
                    self.recorder.failure(GET, "integrity")
                    continue
                self.recorder.success(GET, time.monotonic() - began)

    def _sender(self, index: int) -> None:
        rng = self._rng(SEND, index)
        with self.client() as client:
            for seq, _ in enumerate(self._paced(SEND)):
                send_id = f"s{index}-{seq}"
                topic = rng.choice(self.topics)
                body = rng.randbytes(rng.randint(0, self.config.max_message))
                began = time.monotonic()
                try:
                    # One key per logical send: the SDK's retries reuse it, so a send whose
                    # answer a kill swallowed is stored once.
                    result = client.send(
                        topic,
                        message_payload(send_id, body),
                        idempotency_key=f"{self.run_id}-{send_id}",
                    )
                except RonClientError as exc:
                    self.recorder.failure(SEND, exc.code)
                    continue
                self.recorder.success(SEND, time.monotonic() - began)
                self.ledger.record_send(send_id, topic, result.msg_id)

    def _receiver(self, index: int) -> None:
        topic = self.topics[index % len(self.topics)]
        with self.client() as client:
            while not self._consuming.is_set():
                began = time.monotonic()
                try:
                    messages = client.receive(
                        topic, max=10, visibility_s=self.config.visibility_s, wait_s=1.0
                    )
                except RonClientError as exc:
                    self.recorder.failure(RECEIVE, exc.code)
                    continue
                # A long-poll's duration is mostly waiting for the next send; what a queue's
                # user feels is the time from a send's commit to its delivery.
                self.recorder.success(RECEIVE, None)
                if not messages:
                    continue
                now_ms = time.time() * 1000
                for m in messages:
                    if m.enqueued_ms is not None:
                        self.recorder.sample(RECEIVE, max(0.0, now_ms - m.enqueued_ms) / 1000)
                self._delivered(messages, began)
                self._ack(client, messages)

    def _delivered(self, messages: list[Message], began: float) -> None:
        for m in messages:
            send_id, ok = parse_payload(m.payload)
            if not ok:
                self.ledger.violation(CORRUPT, f"message {m.msg_id} payload fails its digest")
                continue
            self.ledger.record_delivery(send_id, m.msg_id, began)

    def _ack(self, client: Client, messages: list[Message]) -> None:
        began = time.monotonic()
        try:
            client.ack(messages)
        except Conflict:
            # A lease ran out before the ack and the message was leased again: nothing
            # was removed, it comes back. At-least-once, not a failure of the node.
            self.ledger.stale_ack()
            return
        except RonClientError as exc:
            self.recorder.failure(ACK, exc.code)
            return
        done = time.monotonic()
        self.recorder.success(ACK, done - began)
        self.ledger.record_acks([m.msg_id for m in messages], done)

    # --- OAP ------------------------------------------------------------------------------

    def _oap_getter(self, index: int) -> None:
        asyncio.run(self._oap_main(index))

    async def _oap_main(self, index: int) -> None:
        rng = self._rng(OAP_GET, index)
        cap = self.token.encode() if self.token else b""
        conn: OapClient | None = None
        try:
            # The schedule's waits block this thread's loop, which has nothing else to do:
            # no request is in flight between two operations.
            for _ in self._paced(OAP_GET):
                if not self.ledger.have_objects.is_set():
                    await asyncio.to_thread(self.ledger.have_objects.wait, 0.5)
                    continue
                hex_digest, size = self.ledger.pick_object(rng)
                began = time.monotonic()
                conn, outcome = await self._oap_get(conn, hex_digest, size, cap)
                if outcome is None:
                    self.recorder.success(OAP_GET, time.monotonic() - began)
                else:
                    self.recorder.failure(OAP_GET, outcome)
        finally:
            if conn is not None:
                await conn.close()

    async def _oap_get(
        self, conn: OapClient | None, hex_digest: str, size: int, cap: bytes
    ) -> tuple[OapClient | None, str | None]:
        """One verified OAP GET, retried like the SDK retries over HTTP (reconnecting
        when the connection died). Returns the connection to reuse and None, or the
        error code of the last failure."""
        policy = self.config.retry
        deadline = time.monotonic() + policy.deadline_s
        code = "unavailable"
        for attempt in range(1, policy.max_attempts + 1):
            try:
                if conn is None:
                    conn = await OapClient.connect(self.oap_url, ca_file=self.ca_file, timeout=10)
                hasher = blake3.blake3()
                got = 0
                async with asyncio.timeout(30):
                    request = {"op": "get", "addr": f"b3:{hex_digest}"}
                    async for chunk in conn.stream(AppId.STORAGE, request, cap=cap):
                        hasher.update(chunk)
                        got += len(chunk)
                if got != size or hasher.hexdigest() != hex_digest:
                    self.ledger.violation(
                        CORRUPT, f"oap get b3:{hex_digest}: {got} bytes, wrong digest"
                    )
                    return conn, "integrity"
                return conn, None
            except RonError as exc:
                if exc.code is ErrorCode.NOT_FOUND:
                    self.ledger.violation(MISSING, f"oap get b3:{hex_digest}: {exc.message}")
                    return conn, exc.code.value
                code = exc.code.value
                if not exc.retryable:
                    return conn, code
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                code = f"transport:{type(exc).__name__}"
            # The connection may be dead (its service was killed): start afresh.
            if conn is not None:
                await conn.close()
                conn = None
            self.recorder.retried_once()
            delay = random.random() * policy.backoff_ceiling(attempt)
            if time.monotonic() + delay > deadline or attempt == policy.max_attempts:
                break
            await asyncio.sleep(delay)
        return conn, code

    # --- report ---------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        return {
            "ops": self.recorder.ops(),
            "availability_pct": self.recorder.availability_pct(),
            "retries": self.recorder.retries,
            **self.ledger.counts(),
            "objects_verified": self.verified_objects,
            "violations": dict(self.ledger.violations),
            "violation_examples": list(self.ledger.examples),
            "driver_errors": list(self.crashed),
        }
