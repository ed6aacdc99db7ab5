"""OAP/1 connection state machines: stream rules, limits, replies, and client/server talk."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
import zstandard

from ron.proto.envelope import ErrorCode, RonError
from ron.proto.oap import (
    ClientConnection,
    Flags,
    Frame,
    FrameDecoder,
    Hello,
    HelloReply,
    LocalProtocolError,
    OapLimits,
    ProtocolError,
    RequestData,
    RequestStarted,
    ResponseData,
    ResponseEnded,
    ResponseStarted,
    ServerConnection,
    ServerInfo,
    compress_payload,
    decode_frame,
    encode_frame,
    error_from_payload,
    one_shot_reply,
)

STORAGE = 0x0301
MAILBOX = 0x0201
REQ, RESP, START, END = Flags.REQ, Flags.RESP, Flags.START, Flags.END


def wire(flags: Flags, corr_id: int = 1, payload: bytes = b"", **fields: Any) -> bytes:
    fields.setdefault("app_proto_id", STORAGE)
    return encode_frame(Frame(flags, corr_id=corr_id, payload=payload, **fields))


def kinds(events: Sequence[object]) -> list[str]:
    return [type(event).__name__ for event in events]


def only_error(events: Sequence[object]) -> ProtocolError:
    [event] = events
    assert isinstance(event, ProtocolError)
    return event


def body(data: bytes) -> Any:
    return json.loads(decode_frame(data).payload)


# --- requests --------------------------------------------------------------------------


def test_one_shot_request_starts_and_ends_in_one_frame() -> None:
    server = ServerConnection()
    events = server.receive_data(wire(REQ | START | END, 5, b'{"op":"get"}', tenant_id=9))
    assert kinds(events) == ["RequestStarted", "RequestEnded"]
    started = events[0]
    assert isinstance(started, RequestStarted)
    assert (started.corr_id, started.app_proto_id, started.tenant_id) == (5, STORAGE, 9)
    assert started.payload == b'{"op":"get"}'
    assert started.end


def test_streamed_request_yields_start_data_end() -> None:
    server = ServerConnection()
    data = wire(REQ | START, 3, b"a") + wire(REQ, 3, b"b") + wire(REQ, 3) + wire(REQ | END, 3, b"c")
    events = server.receive_data(data)
    assert kinds(events) == ["RequestStarted", "RequestData", "RequestData", "RequestEnded"]
    assert [e.payload for e in events if isinstance(e, RequestStarted | RequestData)] == [
        b"a",
        b"b",
        b"c",
    ]


def test_cap_is_delivered_with_the_start() -> None:
    server = ServerConnection()
    [started, _] = server.receive_data(
        encode_frame(Frame(REQ | START | END, app_proto_id=STORAGE, cap=b"token"))
    )
    assert isinstance(started, RequestStarted)
    assert started.cap == b"token"
    assert "token" not in repr(started)


def test_hello_with_any_flags_is_a_hello_and_opens_no_stream() -> None:
    server = ServerConnection(info=ServerInfo(server_version="t/1", extra={"revocation_seq": 7}))
    for flags in (Flags(0), REQ | START, RESP | END | Flags.EVENT):
        [event] = server.receive_data(wire(flags, 11, app_proto_id=0, tenant_id=4))
        assert isinstance(event, Hello)
        reply = decode_frame(server.send_hello(event))
        assert (reply.flags, reply.code, reply.app_proto_id) == (RESP | END, 0, 0)
        assert (reply.corr_id, reply.tenant_id) == (11, 4)
        info = json.loads(reply.payload)
        assert info["server_version"] == "t/1"
        assert info["max_frame"] == 1_048_576
        assert info["oap_versions"] == [1]
        assert info["revocation_seq"] == 7
    assert server.open_streams == 0


# --- stream errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([wire(RESP | END)], "RESP from a client"),
        ([wire(Flags.EVENT)], "neither REQ nor RESP"),
        ([wire(REQ | START), wire(REQ | START)], "duplicate START"),
        ([wire(REQ | END)], "END without START"),
        ([wire(REQ)], "continuation without START"),
        ([wire(REQ | START), wire(REQ, app_proto_id=MAILBOX)], "app or tenant changed"),
        ([wire(REQ | START), wire(REQ, tenant_id=2)], "app or tenant changed"),
        ([wire(REQ | START | END), wire(REQ | START)], "corr_id is busy"),
    ],
)
def test_stream_rule_violations_are_non_fatal_400s(frames: list[bytes], message: str) -> None:
    server = ServerConnection()
    for data in frames[:-1]:
        server.receive_data(data)
    error = only_error(server.receive_data(frames[-1]))
    assert (error.status, error.fatal, error.corr_id) == (400, False, 1)
    assert message in error.error.message
    assert not server.closed


def test_cap_on_a_continuation_is_a_400_for_that_stream() -> None:
    bad = bytearray(encode_frame(Frame(REQ | START, app_proto_id=STORAGE, corr_id=1, cap=b"t")))
    bad[5] = int(REQ)
    server = ServerConnection()
    server.receive_data(wire(REQ | START))
    error = only_error(server.receive_data(bytes(bad)))
    assert (error.status, error.fatal, error.corr_id) == (400, False, 1)


def test_after_a_refusal_the_rest_of_that_request_is_ignored() -> None:
    server = ServerConnection()
    server.receive_data(wire(REQ | START))
    error = only_error(server.receive_data(wire(REQ | START)))  # duplicate START
    server.send_error(error, error.error, "c1")
    assert server.receive_data(wire(REQ, payload=b"x") + wire(REQ, payload=b"y")) == []
    assert server.receive_data(wire(REQ | END)) == []
    # The END closed the ignored request: a stray continuation is an error again, and a
    # fresh START works.
    assert isinstance(only_error(server.receive_data(wire(REQ))), ProtocolError)
    assert kinds(server.receive_data(wire(REQ | START))) == ["RequestStarted"]


def test_too_many_open_streams_is_a_retryable_429() -> None:
    server = ServerConnection(OapLimits(max_streams=2))
    opened = server.receive_data(wire(REQ | START, 1) + wire(REQ | START | END, 2))
    error = only_error(server.receive_data(wire(REQ | START, 3)))
    assert (error.status, error.corr_id) == (429, 3)
    reply = server.send_error(error, error.error, "c3")
    assert (decode_frame(reply).code, decode_frame(reply).corr_id) == (429, 3)
    assert body(reply)["retry_after_ms"] == 1000
    assert body(reply)["retryable"] is True
    # Answering stream 2 frees a slot.
    server.send_response(opened[1], b"done")
    assert kinds(server.receive_data(wire(REQ | START, 4))) == ["RequestStarted"]


def test_per_stream_frame_budget_is_400() -> None:
    server = ServerConnection(OapLimits(max_stream_frames=3))
    events = server.receive_data(wire(REQ | START) + wire(REQ, payload=b"a") + wire(REQ))
    assert kinds(events) == ["RequestStarted", "RequestData"]
    assert only_error(server.receive_data(wire(REQ))).status == 400


def test_per_stream_byte_budget_is_413_and_counts_decompressed_bytes() -> None:
    text = bytes(range(256)).hex().encode() * 2  # compresses well, but under 10:1
    packed = compress_payload(text)
    assert packed is not None
    server = ServerConnection(OapLimits(max_stream_bytes=len(text) + 10))
    events = server.receive_data(wire(REQ | START | Flags.COMP, payload=packed))
    assert kinds(events) == ["RequestStarted"]
    assert only_error(server.receive_data(wire(REQ, payload=bytes(11)))).status == 413


def test_comp_payloads_arrive_decompressed_and_bombs_are_413() -> None:
    text = b'{"op":"send","text":"' + b"hi there " * 30 + b'"}'
    packed = compress_payload(text)
    assert packed is not None
    server = ServerConnection()
    [started, _] = server.receive_data(wire(REQ | START | END | Flags.COMP, 1, packed))
    assert isinstance(started, RequestStarted)
    assert started.payload == text
    bomb = zstandard.ZstdCompressor().compress(bytes(1 << 20))
    error = only_error(server.receive_data(wire(REQ | START | END | Flags.COMP, 2, bomb)))
    assert (error.status, error.fatal, error.corr_id) == (413, False, 2)


def test_e2e_payloads_pass_through_untouched_even_with_comp() -> None:
    opaque = b"\x28\xb5\x2f\xfd not really zstd"
    server = ServerConnection()
    flags = REQ | START | END | Flags.COMP | Flags.APP_E2E
    [started, _] = server.receive_data(wire(flags, 1, opaque, app_proto_id=MAILBOX))
    assert isinstance(started, RequestStarted)
    assert started.payload == opaque
    assert started.e2e
    assert "not really" not in repr(started)


# --- fatal errors ----------------------------------------------------------------------


def test_a_fatal_error_closes_after_delivering_earlier_events() -> None:
    server = ServerConnection()
    events = server.receive_data(wire(REQ | START | END, 1) + (2**31).to_bytes(4, "little"))
    assert kinds(events) == ["RequestStarted", "RequestEnded", "ProtocolError"]
    error = events[-1]
    assert isinstance(error, ProtocolError)
    assert (error.status, error.fatal, error.corr_id) == (413, True, None)
    assert server.closed
    assert server.receive_data(wire(REQ | START | END, 2)) == []
    frame = decode_frame(server.send_error(error, error.error, "c0"))
    assert (frame.flags, frame.code, frame.corr_id, frame.app_proto_id) == (RESP | END, 413, 0, 0)
    with pytest.raises(LocalProtocolError):
        server.send_response(events[0], b"late")


# --- replies ---------------------------------------------------------------------------


def test_a_single_reply_is_a_bare_resp_end_and_frees_the_stream() -> None:
    server = ServerConnection()
    [started, _] = server.receive_data(wire(REQ | START | END, 7, tenant_id=3))
    reply = decode_frame(server.send_response(started, b"ok"))
    assert reply == Frame(RESP | END, 0, STORAGE, 3, 7, b"", b"ok")
    assert server.open_streams == 0
    with pytest.raises(LocalProtocolError):
        server.send_response(started, b"again")


def test_ok_frames_for_stream_is_start_chunks_then_an_empty_end() -> None:
    server = ServerConnection()
    [started, _] = server.receive_data(wire(REQ | START | END, 42))
    frames = [decode_frame(f) for f in server.ok_frames_for_stream(started, [b"a", b"b", b"c"])]
    assert [(f.flags, f.payload) for f in frames] == [
        (RESP | START, b"a"),
        (RESP, b"b"),
        (RESP, b"c"),
        (RESP | END, b""),
    ]
    assert server.open_streams == 0


def test_ok_frames_for_an_empty_object_is_one_empty_end() -> None:
    server = ServerConnection()
    [started, _] = server.receive_data(wire(REQ | START | END, 42))
    assert [decode_frame(f).flags for f in server.ok_frames_for_stream(started, [])] == [RESP | END]


def test_an_error_can_end_a_reply_that_already_started() -> None:
    server = ServerConnection()
    [started, _] = server.receive_data(wire(REQ | START | END, 42))
    server.send_response(started, b"chunk", end=False)
    frame = decode_frame(
        server.send_error(started, RonError(ErrorCode.INTERNAL, "disk gone"), "c42")
    )
    assert (frame.flags, frame.code) == (RESP | END, 500)
    assert server.open_streams == 0


def test_error_frames_echo_the_stream_and_carry_the_envelope() -> None:
    server = ServerConnection()
    [started, _] = server.receive_data(
        wire(REQ | START | END, 8, app_proto_id=MAILBOX, tenant_id=5)
    )
    err = RonError(ErrorCode.UNAVAILABLE, "busy", retry_after=2.5)
    frame = decode_frame(server.send_error(started, err, "abc"))
    assert (frame.app_proto_id, frame.tenant_id, frame.corr_id, frame.code) == (MAILBOX, 5, 8, 503)
    assert json.loads(frame.payload) == {
        "code": "unavailable",
        "message": "busy",
        "retryable": True,
        "corr_id": "abc",
        "error": "unavailable",
        "retry_after_ms": 2500,
    }


def test_a_final_reply_before_the_request_ends_ignores_the_rest_of_it() -> None:
    server = ServerConnection()
    [started] = server.receive_data(wire(REQ | START, 1, b"part"))
    server.send_error(started, RonError(ErrorCode.FORBIDDEN, "no"), "c1")
    assert server.receive_data(wire(REQ, 1, b"more") + wire(REQ | END, 1)) == []
    assert server.open_streams == 0


def test_reply_flags_are_limited_to_the_optional_ones() -> None:
    server = ServerConnection()
    [started] = server.receive_data(wire(REQ | START, 1))
    with pytest.raises(LocalProtocolError):
        server.send_response(started, b"", flags=Flags.START)
    pushed = decode_frame(server.send_response(started, b"{}", end=False, flags=Flags.EVENT))
    assert pushed.flags == RESP | START | Flags.EVENT


# --- client ----------------------------------------------------------------------------


def talk(client: ClientConnection, server: ServerConnection, data: bytes) -> list[object]:
    """Deliver client bytes to the server, answer like a tiny omnigate, return client events."""
    answers = b""
    for event in server.receive_data(data):
        if isinstance(event, Hello):
            answers += server.send_hello(event)
        elif isinstance(event, RequestStarted) and event.end:
            request = json.loads(event.payload)
            if request.get("op") == "get":
                answers += b"".join(server.ok_frames_for_stream(event, [b"ab" * 10, b"cd"]))
            else:
                answers += server.send_error(event, RonError(ErrorCode.BAD_REQUEST, "op?"), "x")
        elif isinstance(event, ProtocolError):
            answers += server.send_error(event, event.error, "x")
    return list(client.receive_data(answers))


def test_client_and_server_complete_a_hello_and_a_streamed_get() -> None:
    client, server = ClientConnection(), ServerConnection()
    [reply] = talk(client, server, client.hello())
    assert isinstance(reply, HelloReply)
    assert reply.info["oap_versions"] == [1]

    corr_id, data = client.start_request(STORAGE, b'{"op":"get","path":"/x"}', cap=b"cap")
    events = talk(client, server, data)
    assert kinds(events) == ["ResponseStarted", "ResponseData", "ResponseEnded"]
    first, more, ended = events
    assert isinstance(first, ResponseStarted) and isinstance(more, ResponseData)
    assert isinstance(ended, ResponseEnded)
    assert first.corr_id == corr_id
    assert first.payload + more.payload == b"ab" * 10 + b"cd"
    assert ended.code == 0
    assert client.open_streams == 0


def test_client_sees_error_replies_and_can_rebuild_the_error() -> None:
    client, server = ClientConnection(), ServerConnection()
    _, data = client.start_request(MAILBOX, b'{"op":"nope"}')
    started, _ = talk(client, server, data)
    assert isinstance(started, ResponseStarted)
    assert started.code == 400 and started.end
    err = error_from_payload(started.code, started.payload)
    assert (err.code, err.message) == (ErrorCode.BAD_REQUEST, "op?")


def test_client_streams_a_request_and_refuses_misuse() -> None:
    client = ClientConnection()
    corr_id, first = client.start_request(STORAGE, b"a", end=False, compress=True)
    last = client.send_data(corr_id, b"b", end=True)
    frames = FrameDecoder().feed(first + last)
    assert [f.flags for f in frames] == [REQ | START, REQ | END]
    with pytest.raises(LocalProtocolError):
        client.send_data(corr_id, b"late")
    with pytest.raises(LocalProtocolError):
        client.start_request(0, b"")


def test_client_compresses_only_when_it_helps() -> None:
    client = ClientConnection()
    text = b'{"op":"send","text":"' + b"hello " * 50 + b'"}'
    _, data = client.start_request(MAILBOX, text, compress=True)
    frame = decode_frame(data)
    assert frame.flags & Flags.COMP
    assert ServerConnection().receive_data(data)[0].payload == text  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([wire(REQ | END, 1)], "only send RESP"),
        ([wire(RESP, 1)], "continuation without START"),
        ([wire(RESP | START, 1), wire(RESP | START, 1)], "duplicate START"),
        ([wire(RESP | END, 99)], "no request"),
    ],
)
def test_client_checks_the_reply_rules(frames: list[bytes], message: str) -> None:
    client = ClientConnection()
    client.start_request(STORAGE, b"{}", corr_id=1)
    events = client.receive_data(b"".join(frames))
    error = events[-1]
    assert isinstance(error, ProtocolError)
    assert message in error.error.message


def test_client_delivers_an_orphan_error_frame_as_a_final_reply() -> None:
    client = ClientConnection()
    orphan = encode_frame(Frame(RESP | END, code=413, payload=b'{"code":"payload_too_large"}'))
    started, ended = client.receive_data(orphan)
    assert isinstance(started, ResponseStarted) and isinstance(ended, ResponseEnded)
    assert (started.corr_id, started.code) == (0, 413)


def test_pushed_events_arrive_as_response_data() -> None:
    client = ClientConnection()
    corr_id, _ = client.start_request(MAILBOX, b'{"op":"subscribe","topic":"t"}', end=False)
    data = wire(RESP | START, corr_id, b"{}", app_proto_id=MAILBOX) + wire(
        RESP | Flags.EVENT | Flags.ACK_REQ, corr_id, b'{"msg_id":"m1"}', app_proto_id=MAILBOX
    )
    _, pushed = client.receive_data(data)
    assert isinstance(pushed, ResponseData)
    assert pushed.is_event
    assert pushed.flags & Flags.ACK_REQ


def test_a_hostile_server_cannot_crash_a_client_with_deeply_nested_json() -> None:
    """An error frame whose payload nests 100,000 arrays still becomes a RonError chosen
    by the frame's status: the client's parser must not die of recursion."""
    nested = b"[" * 100_000 + b"]" * 100_000
    err = error_from_payload(503, nested)
    assert isinstance(err, RonError) and err.code is ErrorCode.UNAVAILABLE


# --- one-shot requests answered on the spot (omnigate's fast path) ---------------------------


def test_one_shot_finds_a_plain_one_shot_and_leaves_the_stream_table_alone() -> None:
    server = ServerConnection()
    frame = wire(REQ | START | END, 7, b"{}", tenant_id=(3 << 64) | 9, cap=b"tok")
    data = b"xx" + frame + wire(REQ | START | END, 8)
    found = server.one_shot(data, 2)
    assert found == (2 + len(frame), STORAGE, (3 << 64) | 9, 7, b"tok", b"{}")
    assert server.open_streams == 0
    # Reserved flag bits are dropped on receipt, here as there.
    raw = bytearray(frame)
    raw[6] = 0x01
    assert server.one_shot(bytes(raw), 0) is not None


@pytest.mark.parametrize("size", [0, 1, 100, 65_536])
def test_one_shot_reply_is_what_send_response_builds(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    tenant = (5 << 64) | 77
    server = ServerConnection()
    [started, _] = server.receive_data(wire(REQ | START | END, 41, tenant_id=tenant))
    assert isinstance(started, RequestStarted)
    expected = (server.send_response(started, payload, end=False) if payload else b"") + (
        server.send_response(started, b"", end=True)
    )
    head, end = one_shot_reply(STORAGE, tenant, 41, size)
    assert head + payload + end == expected


def _busy(server: ServerConnection, corr_id: int) -> None:
    server.receive_data(wire(REQ | START, corr_id))


@pytest.mark.parametrize(
    ("case", "data"),
    [
        ("partial", wire(REQ | START | END, 1, b"{}")[:-1]),
        ("header only", wire(REQ | START | END, 1)[:20]),
        ("start only", wire(REQ | START, 1)),
        ("compressed", wire(REQ | START | END | Flags.COMP, 1, b"not even zstd")),
        ("event", wire(REQ | START | END | Flags.EVENT, 1)),
        ("hello", wire(Flags(0), 1, app_proto_id=0)),
        ("resp", wire(RESP | START | END, 1)),
        ("version", b"\x21\x00\x00\x00\x02" + wire(REQ | START | END, 1)[5:]),
        ("over max_frame", wire(REQ | START | END, 1, b"x" * 2000)),
        ("over the stream budget", wire(REQ | START | END, 1, b"x" * 600)),
        ("busy corr_id", wire(REQ | START | END, 2)),
        ("discarded corr_id", wire(REQ | START | END, 3)),
    ],
)
def test_one_shot_declines_whatever_receive_data_would_treat_otherwise(
    case: str, data: bytes
) -> None:
    limits = OapLimits(max_frame=1024, max_stream_bytes=512)
    server = ServerConnection(limits)
    _busy(server, 2)
    # corr_id 3 refused mid-request: its later frames would be dropped silently.
    server.receive_data(wire(REQ | START, 3, b"x" * 600))
    assert server.one_shot(data, 0) is None, case


def test_one_shot_declines_with_bytes_pending_or_no_room_or_after_a_fatal_error() -> None:
    frame = wire(REQ | START | END, 1)
    pending = ServerConnection()
    pending.receive_data(frame[:10])
    assert pending.one_shot(frame, 0) is None
    full = ServerConnection(OapLimits(max_streams=1))
    _busy(full, 9)
    assert full.one_shot(frame, 0) is None
    broken = ServerConnection()
    broken.receive_data(b"\xff\xff\xff\xff")
    assert broken.closed and broken.one_shot(frame, 0) is None
