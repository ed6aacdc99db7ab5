"""Property tests: the OAP/1 codec round-trips every field's full range, and no input,
however it is chunked, gets anything out of the decoders but frames and OapError."""

from __future__ import annotations

import contextlib
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ron.proto.envelope import ErrorCode, RonError
from ron.proto.oap import (
    ClientConnection,
    Flags,
    Frame,
    FrameDecoder,
    LocalProtocolError,
    OapError,
    OapLimits,
    ProtocolError,
    ServerConnection,
    compress_payload,
    decode_frame,
    decompress_payload,
    encode_frame,
)

U16 = st.integers(0, 0xFFFF)


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    flags = Flags(draw(st.integers(0, 0xFF)))
    cap = draw(st.binary(max_size=64)) if flags & Flags.START else b""
    return Frame(
        flags=flags,
        code=draw(U16),
        app_proto_id=draw(U16),
        tenant_id=draw(st.integers(0, 2**128 - 1)),
        corr_id=draw(st.integers(0, 2**64 - 1)),
        cap=cap,
        payload=draw(st.binary(max_size=512)),
    )


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def outcomes(chunks: list[bytes], max_frame: int) -> list[object]:
    """Decode chunk by chunk; an error becomes ``(status, fatal)`` in the sequence."""
    decoder = FrameDecoder(max_frame)
    out: list[object] = []
    for chunk in chunks:
        pending = chunk
        while True:
            try:
                out.extend(decoder.feed(pending))
                break
            except OapError as exc:
                out.extend(exc.frames)
                out.append((exc.status, exc.fatal))
                if exc.fatal:
                    return out
                pending = b""
    return out


@given(frames())
def test_every_field_round_trips_across_its_full_range(frame: Frame) -> None:
    data = encode_frame(frame)
    assert len(data) == 37 + len(frame.cap) + len(frame.payload)
    assert decode_frame(data) == frame


@given(st.lists(frames(), max_size=8), st.lists(st.integers(0, 10_000), max_size=12))
def test_frames_survive_any_chunking(items: list[Frame], cuts: list[int]) -> None:
    data = b"".join(encode_frame(frame) for frame in items)
    assert outcomes(chunked(data, cuts), 1_048_576) == items


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=600),
    st.lists(st.integers(0, 600), max_size=10),
    st.sampled_from([64, 200, 1_048_576]),
)
def test_arbitrary_bytes_give_frames_or_oap_errors_whatever_the_chunking(
    data: bytes, cuts: list[int], max_frame: int
) -> None:
    whole = outcomes([data], max_frame)
    assert outcomes(chunked(data, cuts), max_frame) == whole
    for item in whole:
        if isinstance(item, Frame):
            assert item.length <= max_frame
            assert decode_frame(encode_frame(item, max_frame=max_frame)) == item


@given(st.binary(max_size=300).map(lambda b: b"\x28\xb5\x2f\xfd" + b) | st.binary(max_size=300))
def test_decompress_gives_bytes_or_oap_error(payload: bytes) -> None:
    try:
        out = decompress_payload(payload, max_frame=4096)
    except OapError as exc:
        assert exc.status in (400, 413)
    else:
        assert len(out) <= 10 * len(payload)


@given(st.binary(max_size=4096))
def test_compressed_payloads_decompress_to_the_original(data: bytes) -> None:
    packed = compress_payload(data)
    if packed is not None:
        assert decompress_payload(packed) == data


# A small world of corr_ids and flags, so the state machines see real collisions.
stream_frames = st.builds(
    Frame,
    flags=st.integers(0, 0xFF).map(Flags),
    app_proto_id=st.sampled_from([0, 0x0201, 0x0301]),
    tenant_id=st.sampled_from([0, 1]),
    corr_id=st.integers(0, 5),
    payload=st.binary(max_size=40),
)


@given(st.lists(stream_frames, max_size=40), st.data())
def test_server_state_machine_never_raises_and_respects_its_limits(
    items: list[Frame], data: st.DataObject
) -> None:
    limits = OapLimits(max_streams=3, max_stream_frames=4, max_stream_bytes=64)
    server = ServerConnection(limits)
    for frame in items:
        for event in server.receive_data(encode_frame(frame)):
            if isinstance(event, ProtocolError):
                decode_frame(server.send_error(event, event.error, "p"))
            elif data.draw(st.booleans()) and server.open_streams:
                # Replying to a stream that is already answered is our bug, reported as such.
                with contextlib.suppress(LocalProtocolError):
                    server.send_response(event, b"r", end=data.draw(st.booleans()))
        assert server.open_streams <= limits.max_streams
    server.send_error(Frame(Flags(0)), RonError(ErrorCode.INTERNAL, "bye"), "p")


@given(st.lists(stream_frames, max_size=40))
def test_client_state_machine_never_raises(items: list[Frame]) -> None:
    client = ClientConnection()
    for corr_id in range(3):
        client.start_request(0x0301, b"{}", corr_id=corr_id, end=corr_id != 2)
    for frame in items:
        client.receive_data(encode_frame(frame))
