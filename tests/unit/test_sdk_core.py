"""The SDK's sans-IO core: retry decisions, error mapping, verified downloads, SSE."""

from __future__ import annotations

import json
import os
from pathlib import Path

import blake3
import pytest

from ron.proto.address import address_of
from ron.sdk import (
    ClientConfig,
    IntegrityError,
    InvalidArgument,
    NotFound,
    PaymentRequired,
    QuotaExhausted,
    RetryEvent,
    RetryPolicy,
    RonClientError,
    TransportError,
    Unavailable,
)
from ron.sdk.core import Call, ClientCore, Download, PutBody, check_corr_id
from ron.sdk.errors import error_from_response, parse_retry_after
from ron.sdk.mailbox import SseParser, receipts_of
from ron.sdk.retry import Attempts, Fail, Retry


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def envelope(code: str, retryable: bool, **extra: object) -> bytes:
    return json.dumps(
        {"code": code, "message": "m", "retryable": retryable, "corr_id": "c", **extra}
    ).encode()


def quota(retry_after: str = "2") -> RonClientError:
    return error_from_response(
        429, {"retry-after": retry_after}, envelope("quota_exhausted", True), corr_id="c1"
    )


# --- retry policy -------------------------------------------------------------------


def test_retry_after_is_honoured_never_sooner() -> None:
    clock = FakeClock()
    attempts = Attempts(RetryPolicy(), corr_id="c1", clock=clock, rand=lambda: 0.999)
    attempts.begin()
    step = attempts.on_error(quota("3"))
    assert isinstance(step, Retry) and 3.0 <= step.delay_s < 3.0 + 0.1


def test_backoff_is_full_jitter_under_an_exponential_capped_ceiling() -> None:
    policy = RetryPolicy(max_attempts=20, deadline_s=10_000, base_s=0.1, cap_s=10.0)
    ceilings = [policy.backoff_ceiling(n) for n in range(1, 12)]
    assert ceilings[:4] == [0.1, 0.2, 0.4, 0.8] and ceilings[-1] == 10.0
    for rand, expect in ((0.0, 0.0), (0.5, 0.5)):
        attempts = Attempts(policy, corr_id="c", clock=FakeClock(), rand=lambda r=rand: r)
        delays = []
        for _ in range(10):
            attempts.begin()
            step = attempts.on_error(TransportError("x", retryable=True))
            assert isinstance(step, Retry)
            delays.append(step.delay_s)
        assert delays == [expect * policy.backoff_ceiling(n) for n in range(1, 11)]


def test_attempts_are_bounded_by_count() -> None:
    attempts = Attempts(RetryPolicy(max_attempts=3), corr_id="c", clock=FakeClock())
    steps = []
    for _ in range(3):
        attempts.begin()
        steps.append(attempts.on_error(TransportError("x", retryable=True)))
    assert [type(s) for s in steps] == [Retry, Retry, Fail]


def test_a_wait_past_the_deadline_is_not_started() -> None:
    clock = FakeClock()
    attempts = Attempts(RetryPolicy(deadline_s=5.0), corr_id="c", clock=clock)
    attempts.begin()
    assert isinstance(attempts.on_error(quota("2")), Retry)
    clock.now += 2.0
    attempts.begin()
    step = attempts.on_error(quota("4"))  # would end at +6 s, past the 5 s deadline
    assert isinstance(step, Fail) and isinstance(step.error, QuotaExhausted)
    assert step.error.retry_after == 4.0


def test_a_retry_after_longer_than_the_policy_allows_is_raised() -> None:
    attempts = Attempts(RetryPolicy(max_retry_after_s=5), corr_id="c", clock=FakeClock())
    attempts.begin()
    assert isinstance(attempts.on_error(quota("30")), Fail)


def test_non_retryable_envelopes_and_non_replayable_bodies_are_never_retried() -> None:
    attempts = Attempts(RetryPolicy(), corr_id="c", clock=FakeClock())
    attempts.begin()
    bad = error_from_response(400, {}, envelope("bad_request", False), corr_id="c")
    assert isinstance(attempts.on_error(bad), Fail)
    one_shot = Attempts(RetryPolicy(), corr_id="c", replayable=False, clock=FakeClock())
    one_shot.begin()
    assert isinstance(one_shot.on_error(quota()), Fail)
    assert isinstance(one_shot.on_error(TransportError("reset", retryable=True)), Fail)


def test_on_retry_sees_every_wait_with_the_same_corr_id() -> None:
    events: list[RetryEvent] = []
    attempts = Attempts(
        RetryPolicy(), corr_id="abc", clock=FakeClock(), on_retry=events.append, rand=lambda: 0
    )
    for _ in range(3):
        attempts.begin()
        attempts.on_error(quota("1"))
    assert [(e.corr_id, e.attempt, e.delay_s) for e in events] == [
        ("abc", 1, 1.0),
        ("abc", 2, 1.0),
        ("abc", 3, 1.0),
    ]


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(base_s=1.0, cap_s=0.5)
    assert RetryPolicy.never().max_attempts == 1


# --- errors -------------------------------------------------------------------------


def test_envelope_codes_pick_the_class_and_carry_the_fields() -> None:
    err = quota("7")
    assert isinstance(err, QuotaExhausted) and err.retryable and err.retry_after == 7.0
    assert (err.code, err.status, err.corr_id) == ("quota_exhausted", 429, "c1")
    paid = error_from_response(
        402,
        {},
        envelope(
            "payment_required",
            False,
            currency="USD",
            price_model="per_request",
            price=0.25,
            wallet="w-1",
        ),
        corr_id="c2",
    )
    assert isinstance(paid, PaymentRequired)
    assert (paid.currency, paid.price_model, paid.price, paid.wallet) == (
        "USD",
        "per_request",
        0.25,
        "w-1",
    )
    assert "c2" in str(paid)


def test_the_envelope_code_wins_over_the_status_and_its_retryable_flag_is_kept() -> None:
    err = error_from_response(502, {}, envelope("upstream_unavailable", True), corr_id=None)
    assert isinstance(err, Unavailable) and err.retryable


def test_without_an_envelope_the_status_decides() -> None:
    err = error_from_response(503, {}, b"<html>busy</html>", corr_id="c")
    assert isinstance(err, Unavailable) and err.retryable and err.code == "unavailable"
    err = error_from_response(404, {}, b"", corr_id="c")
    assert isinstance(err, NotFound) and not err.retryable
    err = error_from_response(418, {}, b"", corr_id="c")
    assert type(err) is RonClientError and not err.retryable


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# --- config and arguments -----------------------------------------------------------


def test_from_env_reads_url_key_and_capability() -> None:
    config = ClientConfig.from_env({"RON_API_KEY": "k" * 20, "RON_CAP": "cap-token"})
    assert config.base_url == "http://127.0.0.1:8080"
    headers = ClientCore(config).headers("corr-1")
    assert headers["x-api-key"] == "k" * 20 and headers["authorization"] == "Bearer cap-token"
    assert headers["x-corr-id"] == "corr-1"
    assert "k" * 20 not in repr(config) and "cap-token" not in repr(config)
    config = ClientConfig.from_env({"RON_NODE_URL": "http://node:9000/"})
    assert config.base_url == "http://node:9000" and config.api_key is None
    assert "x-api-key" not in ClientCore(config).headers("c")


def test_corr_ids_are_generated_or_validated() -> None:
    assert len(check_corr_id(None)) == 32 and check_corr_id(None) != check_corr_id(None)
    assert check_corr_id("my-job.42") == "my-job.42"
    with pytest.raises(InvalidArgument):
        check_corr_id("has space")


def test_put_bodies_know_whether_they_can_be_replayed(tmp_path: Path) -> None:
    assert PutBody(b"abc", asynchronous=False).replayable
    path = tmp_path / "body.bin"
    path.write_bytes(b"x" * 600_000)
    from_file = PutBody(path, asynchronous=False)
    assert from_file.replayable and from_file.headers() == {"content-length": "600000"}
    for _ in range(2):  # every attempt rereads the file from the start
        assert b"".join(from_file.sync_content()) == b"x" * 600_000  # type: ignore[arg-type]
        assert from_file.sent_hex() == blake3.blake3(b"x" * 600_000).hexdigest()
    body = PutBody(iter([b"a", b"b"]), asynchronous=False)
    assert not body.replayable
    content = body.sync_content()
    assert b"".join(content) == b"ab"  # type: ignore[arg-type]
    assert body.sent_hex() == blake3.blake3(b"ab").hexdigest()
    with pytest.raises(RuntimeError):
        body.sync_content()
    with pytest.raises(InvalidArgument):
        PutBody("text is ambiguous", asynchronous=False)


def test_send_makes_one_idempotency_key_per_logical_send() -> None:
    core = ClientCore(ClientConfig())
    first = core.send("t", b"x", headers={"k": "v"}, idempotency_key=None, corr_id=None)
    second = core.send("t", b"x", headers=None, idempotency_key=None, corr_id=None)
    key = first.headers["idempotency-key"]
    assert key and key != second.headers["idempotency-key"]
    assert first.headers["x-ron-header-k"] == "v"
    given = core.send("t", b"x", headers=None, idempotency_key="mine-1", corr_id=None)
    assert given.headers["idempotency-key"] == "mine-1"


def test_a_batch_keys_every_message_once_and_a_retry_reuses_the_keys() -> None:
    core = ClientCore(ClientConfig())
    call = core.send_batch("t", [b"a", b"b", (b"c", {"k": "v"})], corr_id=None)
    assert call.content is not None
    keys = [m["idempotency_key"] for m in json.loads(call.content)["messages"]]
    assert len(set(keys)) == 3
    other = core.send_batch("t", [b"a"], corr_id=None)
    assert other.content is not None
    assert json.loads(other.content)["messages"][0]["idempotency_key"] not in keys
    # The call is what a retry sends again: the same body, so the same keys.
    assert [m["idempotency_key"] for m in json.loads(call.content)["messages"]] == keys
    # One stem per batch (adjacent in the node's index), at most 128 characters.
    stems = {k.rsplit("-", 1)[0] for k in keys}
    assert len(stems) == 1 and all(len(k) <= 128 for k in keys)


def test_only_bodies_held_in_memory_and_small_enough_go_on_plain_connections(
    tmp_path: Path,
) -> None:
    def call(content: bytes | None = None, body: PutBody | None = None) -> Call[None]:
        return Call("POST", "/x", lambda r: None, "c", content=content, body=body)

    assert call().plain_body(4) == (True, None)
    assert call(b"abcd").plain_body(4) == (True, b"abcd")
    assert call(b"abcde").plain_body(4) == (False, b"abcde")
    assert call(body=PutBody(b"abc", asynchronous=False)).plain_body(4) == (True, b"abc")
    path = tmp_path / "f"
    path.write_bytes(b"ab")
    assert call(body=PutBody(path, asynchronous=False)).plain_body(4) == (False, None)
    stream = PutBody(iter([b"a"]), asynchronous=False)
    assert call(body=stream).plain_body(4) == (False, None)


def test_receipts_are_taken_from_strings_or_messages() -> None:
    assert receipts_of("r1") == ["r1"]
    with pytest.raises(ValueError):
        receipts_of([])


# --- downloads ----------------------------------------------------------------------


def _serve(dl: Download, data: bytes, status: int = 200, first: int = 0) -> bytes:
    headers = {"etag": address_of(data).etag, "content-length": str(len(data) - first)}
    if status == 206:
        headers["content-range"] = f"bytes {first}-{len(data) - 1}/{len(data)}"
    dl.on_response(status, headers)
    out = b"".join(dl.feed(data[i : i + 1000]) for i in range(first, len(data), 1000))
    return out


def test_a_full_read_is_verified() -> None:
    data = os.urandom(5000)
    dl = Download(address_of(data), corr_id="c")
    assert _serve(dl, data) == data and dl.finish() and dl.verified


def test_a_mismatch_raises_integrity_error_with_the_corr_id() -> None:
    data = os.urandom(5000)
    dl = Download(address_of(data), corr_id="c9")
    bad = bytearray(data)
    bad[4000] ^= 1
    dl.on_response(200, {"content-length": "5000"})
    for i in range(0, 5000, 1000):
        dl.feed(bytes(bad[i : i + 1000]))
    with pytest.raises(IntegrityError) as info:
        dl.finish()
    assert info.value.corr_id == "c9"


def test_an_interrupted_read_resumes_with_a_range_and_keeps_hashing() -> None:
    data = os.urandom(5000)
    dl = Download(address_of(data), corr_id="c")
    assert "range" not in dl.request_headers()
    dl.on_response(200, {"content-length": "5000"})
    got = dl.feed(data[:1500])
    dl.interrupted()
    assert dl.request_headers()["range"] == "bytes=1500-"
    got += _serve(dl, data, 206, first=1500)
    assert got == data and dl.finish() and dl.verified


def test_a_resume_answered_with_a_full_200_skips_what_was_delivered() -> None:
    data = os.urandom(3000)
    dl = Download(address_of(data), corr_id="c")
    dl.on_response(200, {"content-length": "3000"})
    got = dl.feed(data[:1200])
    got += _serve(dl, data)
    assert got == data and dl.finish() and dl.verified


def test_a_ranged_read_delivers_exactly_the_slice() -> None:
    data = os.urandom(4000)
    dl = Download(address_of(data), corr_id="c", start=100, end=2100)
    assert dl.request_headers()["range"] == "bytes=100-2099"
    dl.on_response(206, {"content-range": "bytes 100-2099/4000"})
    assert dl.feed(data[100:2100]) == data[100:2100]
    assert dl.finish() and not dl.verified  # a slice cannot be checked against the address


def test_an_object_withdrawn_after_a_broken_read_is_an_integrity_error() -> None:
    data = os.urandom(3000)
    dl = Download(address_of(data), corr_id="c")
    plain = NotFound("gone", status=404, corr_id="c")
    assert dl.on_error(plain) is plain  # a first answer of 404 is just "not found"
    dl.on_response(200, {"content-length": "3000"})
    dl.feed(data[:1000])
    dl.interrupted()
    assert isinstance(dl.on_error(plain), IntegrityError)


def test_the_wrong_entity_is_an_integrity_error() -> None:
    dl = Download(address_of(b"a"), corr_id="c")
    with pytest.raises(IntegrityError):
        dl.on_response(200, {"etag": address_of(b"b").etag, "content-length": "1"})


def test_bad_ranges_are_refused_before_sending() -> None:
    with pytest.raises(InvalidArgument):
        Download(address_of(b"a"), corr_id="c", start=5, end=5)
    with pytest.raises(InvalidArgument):
        Download(address_of(b"a"), corr_id="c", start=-1)


# --- server-sent events -------------------------------------------------------------


def test_sse_parser_handles_split_chunks_comments_and_crlf() -> None:
    stream = (
        b': subscribed\n\nid: 1\nevent: message\ndata: {"a":1}\n\n'
        b": keepalive\r\n\r\nevent: error\r\ndata: x\r\ndata: y\r\n\r\n"
    )
    parser = SseParser()
    events = []
    for i in range(0, len(stream), 7):
        events += parser.feed(stream[i : i + 7])
    assert [(e.event, e.data, e.id) for e in events] == [
        ("message", '{"a":1}', "1"),
        ("error", "x\ny", "1"),
    ]
    assert parser.comments == 2


def test_a_request_that_could_never_be_sent_is_not_retried() -> None:
    import httpx

    attempts = Attempts(RetryPolicy(), corr_id="c", clock=FakeClock())
    attempts.begin()
    step = attempts.on_transport_error(httpx.LocalProtocolError("illegal header"))
    assert isinstance(step, Fail) and not step.error.retryable
    attempts.begin()
    step = attempts.on_transport_error(httpx.ConnectError("refused"))
    assert isinstance(step, Retry)


def test_clients_from_env_take_keyword_overrides() -> None:
    from ron.sdk import AsyncClient, Client

    env = {"RON_NODE_URL": "http://node.example:9000", "RON_API_KEY": "k" * 20}
    with Client.from_env(env, timeout=5, retry=RetryPolicy.never()) as sync:
        assert sync.config.base_url == "http://node.example:9000"
        assert sync.config.timeout_s == 5 and sync.config.retry.max_attempts == 1
        assert sync.config.api_key == "k" * 20
    client = AsyncClient.from_env(env, base_url="http://other:1")
    assert client.config.base_url == "http://other:1" and client.config.api_key == "k" * 20
