"""Sans-IO tests of the IPC framing: what bytes become messages, and what becomes FrameError."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ron.ipc import CHUNK_SIZE, MAX_FRAME, FrameError
from ron.ipc.framing import FrameReader, chunk_header, encode, encode_end, validate
from ron.proto.envelope import ErrorCode, RonError

REQUEST = {"id": 7, "m": "storage.get", "a": {"addr": "b3:00", "n": 1}, "dl": 4.5, "s": False}
SHAPES: list[dict[str, Any]] = [
    REQUEST,
    {"id": 8, "m": "storage.put", "a": {}, "dl": 1, "s": True},
    {"id": 8, "c": b"\x00" * 1000},
    {"id": 8, "e": True},
    {"id": 9, "ok": {"pong": True}},
    {"id": 9, "ok": None},
    {"id": 10, "ok": {"size": 3}, "s": True},
    {"id": 11, "err": {"code": "not_found", "message": "no such thing", "retryable": False}},
    {
        "id": 0,
        "err": {
            "code": "unavailable",
            "message": "busy",
            "retryable": True,
            "retry_after": 0.5,
            "extra": {"price": 3},
        },
    },
]


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def feed_all(reader: FrameReader, data: bytes, step: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(0, len(data), step):
        out += reader.feed(data[i : i + step])
    return out


def test_public_constants() -> None:
    assert CHUNK_SIZE == 65536
    assert MAX_FRAME >= (1 << 20)
    assert issubclass(FrameError, RonError)


@pytest.mark.parametrize("msg", SHAPES)
def test_every_shape_round_trips(msg: dict[str, Any]) -> None:
    assert FrameReader().feed(encode(msg)) == [msg]


@pytest.mark.parametrize("step", [1, 2, 3, 4, 5, 7, 64, 1000, 100_000])
def test_any_split_of_a_stream_gives_the_same_messages(step: int) -> None:
    stream = b"".join(encode(m) for m in SHAPES) + encode({"id": 3, "c": bytes(200_000)})
    reader = FrameReader()
    assert feed_all(reader, stream, step) == [*SHAPES, {"id": 3, "c": bytes(200_000)}]
    assert reader.buffered == 0


def test_partial_frame_is_kept_until_complete() -> None:
    data = encode(REQUEST)
    reader = FrameReader()
    assert reader.feed(data[:-1]) == []
    assert reader.buffered == len(data) - 1
    assert reader.feed(data[-1:] + data[:2]) == [REQUEST]
    assert reader.buffered == 2


def test_accepts_bytearray_and_memoryview_input() -> None:
    data = encode(REQUEST) * 2
    assert FrameReader().feed(bytearray(data)) == [REQUEST, REQUEST]
    assert FrameReader().feed(memoryview(data)) == [REQUEST, REQUEST]


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, CHUNK_SIZE + 1, 1 << 20])
def test_chunk_header_matches_generic_encoding(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for cid in (0, 1, 127, 128, 255, 256, 65536, 1 << 33):
        assert chunk_header(cid, size) + payload == encode({"id": cid, "c": payload})


@pytest.mark.parametrize("cid", [0, 1, 200, 70000, 1 << 40])
def test_encode_end_matches_generic_encoding(cid: int) -> None:
    assert encode_end(cid) == encode({"id": cid, "e": True})


def test_largest_frame_is_accepted_and_one_more_byte_is_not() -> None:
    limit = 4096
    overhead = len(msgpack.packb({"id": 1, "c": b"x" * 300}, use_bin_type=True)) - 300
    pad = limit - overhead  # both sizes use the bin16 header
    fits = encode({"id": 1, "c": b"x" * pad}, max_frame=limit)
    assert len(fits) == 4 + limit
    assert FrameReader(limit).feed(fits)[0]["c"] == b"x" * pad
    with pytest.raises(FrameError) as info:
        encode({"id": 1, "c": b"x" * (pad + 1)}, max_frame=limit)
    assert info.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    with pytest.raises(FrameError) as info:
        FrameReader(limit).feed(struct.pack(">I", limit + 1))
    assert info.value.code is ErrorCode.PAYLOAD_TOO_LARGE


def test_oversized_prefix_is_rejected_before_any_body_is_buffered() -> None:
    reader = FrameReader()
    with pytest.raises(FrameError) as info:
        reader.feed(b"\xff\xff\xff")  # incomplete prefix: nothing to decide yet...
        reader.feed(b"\xff")  # ...the fourth byte decides
    assert info.value.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert reader.buffered == 0


def test_oversized_prefix_after_a_partial_frame() -> None:
    reader = FrameReader()
    data = encode(REQUEST)
    reader.feed(data[:5])
    assert reader.feed(data[5:] + b"\x7f\x00\x00\x00") == [REQUEST]
    assert reader.error is not None
    assert reader.error.code is ErrorCode.PAYLOAD_TOO_LARGE
    assert reader.buffered == 0


def test_reader_is_poisoned_after_an_error() -> None:
    reader = FrameReader()
    with pytest.raises(FrameError):
        reader.feed(frame(b"\xc1"))
    assert reader.error is not None
    with pytest.raises(FrameError):
        reader.feed(encode(REQUEST))


def test_good_messages_before_a_bad_frame_are_still_returned() -> None:
    reader = FrameReader()
    assert reader.feed(encode(REQUEST) + frame(b"\xc1") + encode(REQUEST)) == [REQUEST]
    assert reader.error is not None
    assert reader.error.code is ErrorCode.BAD_REQUEST
    with pytest.raises(FrameError):
        reader.feed(b"")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"", "empty frame"),
        (b"\xc1", "never-used msgpack byte"),
        (b"\x92\x01\x02", "array, not a map"),
        (msgpack.packb("hello"), "string, not a map"),
        (msgpack.packb({"id": 1, "ok": 1}) + b"\x00", "trailing bytes"),
        (b"\x81\xa2id", "truncated map"),
        (b"\x82\xa2id\x01\xa1m\xa3\xff\xfe\xfd", "invalid utf-8"),
        (msgpack.packb({"id": 1, "ok": msgpack.ExtType(5, b"x")}), "ext type"),
        (msgpack.packb({1: 2}), "integer map key"),
        (b"\x91" * 5000 + b"\xc0", "deep nesting"),
    ],
)
def test_undecodable_frames_are_bad_request(body: bytes, why: str) -> None:
    with pytest.raises(FrameError) as info:
        FrameReader().feed(frame(body))
    assert info.value.code is ErrorCode.BAD_REQUEST, why


@pytest.mark.parametrize(
    "msg",
    [
        {"m": "x", "a": {}, "dl": 1.0},
        {"id": -1, "ok": 1},
        {"id": True, "ok": 1},
        {"id": 1.0, "ok": 1},
        {"id": "1", "ok": 1},
        {"id": 1},
        {"id": 1, "ok": 1, "err": {}},
        {"id": 1, "c": b"x", "e": True},
        {"id": 1, "m": "", "a": {}, "dl": 1.0},
        {"id": 1, "m": "x" * 257, "a": {}, "dl": 1.0},
        {"id": 1, "m": 5, "a": {}, "dl": 1.0},
        {"id": 1, "m": "x", "dl": 1.0},
        {"id": 1, "m": "x", "a": [], "dl": 1.0},
        {"id": 1, "m": "x", "a": {}},
        {"id": 1, "m": "x", "a": {}, "dl": "soon"},
        {"id": 1, "m": "x", "a": {}, "dl": True},
        {"id": 1, "m": "x", "a": {}, "dl": float("nan")},
        {"id": 1, "m": "x", "a": {}, "dl": float("inf")},
        {"id": 1, "m": "x", "a": {}, "dl": 1.0, "s": 1},
        {"id": 1, "c": "text"},
        {"id": 1, "e": 1},
        {"id": 1, "e": False},
        {"id": 1, "ok": 1, "s": "yes"},
        {"id": 1, "err": "boom"},
        {"id": 1, "err": {"code": "internal", "message": "m"}},
        {"id": 1, "err": {"code": 500, "message": "m", "retryable": True}},
        {"id": 1, "err": {"code": "x", "message": "m", "retryable": True, "retry_after": "1"}},
        {"id": 1, "err": {"code": "x", "message": "m", "retryable": True, "extra": [1]}},
    ],
)
def test_ill_shaped_messages_are_bad_request(msg: dict[str, Any]) -> None:
    with pytest.raises(FrameError) as info:
        FrameReader().feed(encode(msg))
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_unknown_extra_fields_are_ignored_for_forward_compatibility() -> None:
    msg = {**REQUEST, "trace": "abc"}
    assert validate(msg) is msg
    assert FrameReader().feed(encode(msg)) == [msg]


def test_encode_refuses_unencodable_values() -> None:
    with pytest.raises(TypeError):
        encode({"id": 1, "ok": object()})


# ---- properties -----------------------------------------------------------------------

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=64),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
ids = st.integers(min_value=0, max_value=(1 << 64) - 1)
messages = st.one_of(
    st.builds(
        lambda i, m, a, dl, s: {"id": i, "m": m, "a": a, "dl": dl, "s": s},
        ids,
        st.text(min_size=1, max_size=30),
        st.dictionaries(st.text(max_size=8), values, max_size=4),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
    ),
    st.builds(lambda i, c: {"id": i, "c": c}, ids, st.binary(max_size=300)),
    st.builds(lambda i: {"id": i, "e": True}, ids),
    st.builds(lambda i, v: {"id": i, "ok": v}, ids, values),
    st.builds(
        lambda i, code, msg, r: {"id": i, "err": {"code": code, "message": msg, "retryable": r}},
        ids,
        st.sampled_from([c.value for c in ErrorCode]),
        st.text(max_size=40),
        st.booleans(),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(messages, max_size=8), st.integers(min_value=1, max_value=64))
def test_valid_messages_survive_any_chunking(msgs: list[dict[str, Any]], step: int) -> None:
    stream = b"".join(encode(m) for m in msgs)
    reader = FrameReader()
    assert feed_all(reader, stream, step) == msgs
    assert reader.buffered == 0


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=10), st.integers(min_value=16, max_value=4096))
def test_arbitrary_bytes_give_messages_or_frame_error_only(
    pieces: list[bytes], max_frame: int
) -> None:
    reader = FrameReader(max(max_frame, 64))
    try:
        for piece in pieces:
            for msg in reader.feed(piece):
                assert isinstance(msg, dict)
                assert validate(msg) is msg
            assert reader.buffered <= max(max_frame, 64) + 4
    except FrameError as exc:
        assert exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.PAYLOAD_TOO_LARGE)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=1, max_size=200))
def test_arbitrary_frame_bodies_give_messages_or_frame_error_only(body: bytes) -> None:
    """Well-framed garbage exercises the msgpack decoder and the shape validator."""
    try:
        msgs = FrameReader().feed(frame(body))
    except FrameError as exc:
        assert exc.code is ErrorCode.BAD_REQUEST
    else:
        assert len(msgs) == 1 and isinstance(msgs[0], dict)
