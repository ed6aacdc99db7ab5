"""OAP/1 codec: framing, the streaming decoder's limits and errors, and COMP guard rails."""

from __future__ import annotations

import os
import tracemalloc

import pytest
import zstandard

from ron.proto.oap import (
    FIXED,
    HEADER_LEN,
    MAX_FRAME,
    Flags,
    Frame,
    FrameDecoder,
    LocalProtocolError,
    OapError,
    compress_payload,
    decode_frame,
    decompress_payload,
    decompressed_limit,
    encode_frame,
)

ONESHOT = Flags.REQ | Flags.START | Flags.END


def frame(**fields: object) -> Frame:
    base: dict[str, object] = {
        "flags": ONESHOT,
        "app_proto_id": 0x0301,
        "corr_id": 42,
        "payload": b'{"op":"get"}',
    }
    base.update(fields)
    return Frame(**base)  # type: ignore[arg-type]


def header(length: int, *, ver: int = 1, flags: int = 0, cap_len: int = 0) -> bytes:
    """A raw 37-byte header with chosen (possibly invalid) fields."""
    return (
        length.to_bytes(4, "little")
        + bytes([ver])
        + flags.to_bytes(2, "little")
        + bytes(2 + 2 + 16)
        + cap_len.to_bytes(2, "little")
        + bytes(8)
    )


# --- encode_frame / decode_frame ----------------------------------------------------


def test_len_counts_header_cap_and_payload_but_not_itself() -> None:
    data = encode_frame(frame(flags=Flags.REQ | Flags.START, cap=b"tok", payload=b"abcde"))
    assert len(data) == HEADER_LEN + 3 + 5
    assert int.from_bytes(data[:4], "little") == FIXED + 3 + 5


def test_tenant_is_a_little_endian_u128() -> None:
    tenant = 0x0123456789ABCDEF_FEDCBA9876543210
    data = encode_frame(frame(tenant_id=tenant))
    assert data[11:27] == tenant.to_bytes(16, "little")
    assert decode_frame(data).tenant_id == tenant


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("code", -1),
        ("code", 0x1_0000),
        ("app_proto_id", 0x1_0000),
        ("tenant_id", 1 << 128),
        ("tenant_id", -1),
        ("corr_id", 1 << 64),
        ("flags", Flags(0x100) | Flags.REQ),
        ("ver", 2),
        ("cap", bytes(0x1_0000)),
    ],
)
def test_encode_refuses_out_of_range_fields(field: str, value: object) -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(frame(**{field: value}))


def test_encode_refuses_a_cap_without_start() -> None:
    with pytest.raises(LocalProtocolError, match="START"):
        encode_frame(frame(flags=Flags.REQ, cap=b"tok"))


def test_encode_refuses_frames_over_max_frame() -> None:
    fits = frame(payload=bytes(MAX_FRAME - FIXED))
    assert len(encode_frame(fits)) == MAX_FRAME + 4
    with pytest.raises(LocalProtocolError, match="max_frame"):
        encode_frame(frame(payload=bytes(MAX_FRAME - FIXED + 1)))
    with pytest.raises(LocalProtocolError):
        encode_frame(frame(payload=bytes(100)), max_frame=100)


def test_decode_frame_wants_exactly_one_frame() -> None:
    data = encode_frame(frame())
    with pytest.raises(OapError, match="truncated") as short:
        decode_frame(data[:-1])
    assert short.value.status == 400
    with pytest.raises(OapError, match="after the frame") as long:
        decode_frame(data + b"\x00")
    assert long.value.status == 400


def test_reserved_flag_bits_are_dropped_on_decode() -> None:
    data = bytearray(encode_frame(frame()))
    data[6] = 0xFF
    decoded = decode_frame(bytes(data))
    assert decoded.flags == ONESHOT
    assert encode_frame(decoded) == encode_frame(frame())


def test_frame_repr_shows_sizes_never_cap_or_payload_bytes() -> None:
    text = repr(frame(flags=Flags.REQ | Flags.START, cap=b"SECRET-CAP", payload=b"SECRET-BODY"))
    assert "SECRET" not in text
    assert "cap_len=10" in text
    assert "payload_len=11" in text
    assert "REQ|START" in text


# --- FrameDecoder --------------------------------------------------------------------


def test_frames_split_anywhere_come_out_whole() -> None:
    frames = [frame(corr_id=i, payload=os.urandom(i * 7)) for i in range(20)]
    data = b"".join(encode_frame(f) for f in frames)
    for step in (1, 2, 5, 36, 37, 38, 1000, len(data)):
        decoder = FrameDecoder()
        out: list[Frame] = []
        for start in range(0, len(data), step):
            out += decoder.feed(data[start : start + step])
        assert out == frames, step
        assert decoder.buffered == 0


def test_a_frame_is_returned_exactly_when_its_last_byte_arrives() -> None:
    data = encode_frame(frame())
    decoder = FrameDecoder()
    for byte in data[:-1]:
        assert decoder.feed(bytes([byte])) == []
    assert decoder.buffered == len(data) - 1
    assert decoder.feed(data[-1:]) == [frame()]


def test_many_frames_in_one_chunk_and_a_big_frame_byte_by_byte_stay_fast() -> None:
    # Quadratic buffering would turn either of these into minutes.
    many = encode_frame(frame(payload=b"x")) * 20_000
    assert len(FrameDecoder().feed(many)) == 20_000
    big = encode_frame(frame(payload=os.urandom(65_536)))
    decoder = FrameDecoder()
    out: list[Frame] = []
    view = memoryview(big)
    for index in range(len(big)):
        out += decoder.feed(view[index : index + 1])
    assert len(out) == 1
    assert out[0].payload == big[HEADER_LEN:]


def test_oversized_len_is_refused_from_its_four_bytes_alone() -> None:
    decoder = FrameDecoder()
    assert decoder.feed((MAX_FRAME + 1).to_bytes(4, "little")[:3]) == []
    with pytest.raises(OapError) as info:
        decoder.feed((MAX_FRAME + 1).to_bytes(4, "little")[3:])
    assert info.value.status == 413
    assert info.value.fatal
    assert decoder.buffered == 0


def test_oversized_len_is_refused_before_the_body_is_kept() -> None:
    decoder = FrameDecoder(max_frame=1024)
    with pytest.raises(OapError) as info:
        decoder.feed((1025).to_bytes(4, "little") + bytes(1021))
    assert info.value.status == 413
    assert decoder.buffered == 0  # nothing of the announced body is retained


def test_len_equal_to_max_frame_is_accepted() -> None:
    data = encode_frame(frame(payload=bytes(1024 - FIXED)), max_frame=1024)
    assert len(FrameDecoder(max_frame=1024).feed(data)) == 1


@pytest.mark.parametrize(
    ("prefix", "needed", "status"),
    [
        (header(FIXED - 1), 4, 400),  # len below the header
        (header(0), 4, 400),
        (header(FIXED, ver=0), 5, 400),  # version
        (header(FIXED, ver=2), 5, 400),
        (header(FIXED, cap_len=1), 29, 400),  # cap_len beyond len
        (header(FIXED + 3, cap_len=4), 29, 400),
    ],
)
def test_header_errors_are_fatal_as_soon_as_their_bytes_arrive(
    prefix: bytes, needed: int, status: int
) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(prefix[: needed - 1]) == []
    with pytest.raises(OapError) as info:
        decoder.feed(prefix[needed - 1 : needed])
    assert info.value.status == status
    assert info.value.fatal
    assert info.value.corr_id is None


def test_a_fatal_error_is_sticky() -> None:
    decoder = FrameDecoder()
    with pytest.raises(OapError):
        decoder.feed(header(3))
    with pytest.raises(OapError) as again:
        decoder.feed(encode_frame(frame()))
    assert again.value.fatal
    assert again.value.frames == ()


def test_cap_without_start_refuses_only_that_frame() -> None:
    bad = bytearray(encode_frame(frame(flags=Flags.REQ | Flags.START, cap=b"tok", corr_id=7)))
    bad[5] = int(Flags.REQ)
    good = encode_frame(frame(corr_id=8))
    decoder = FrameDecoder()
    with pytest.raises(OapError) as info:
        decoder.feed(encode_frame(frame(corr_id=6)) + bytes(bad) + good)
    err = info.value
    assert (err.status, err.fatal, err.corr_id, err.app_proto_id) == (400, False, 7, 0x0301)
    assert [f.corr_id for f in err.frames] == [6]
    assert decoder.feed(b"") == [frame(corr_id=8)]


def test_decoder_accepts_bytearray_and_memoryview() -> None:
    data = encode_frame(frame())
    assert FrameDecoder().feed(bytearray(data)) == [frame()]
    assert FrameDecoder().feed(memoryview(data)) == [frame()]


def test_decoder_refuses_a_max_frame_below_the_header() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=FIXED - 1)


# --- COMP ----------------------------------------------------------------------------

TEXT = b'{"op":"send","topic":"chat","text":"' + b"hello there " * 40 + b'"}'


def test_compress_then_decompress_round_trips() -> None:
    packed = compress_payload(TEXT)
    assert packed is not None
    assert len(packed) < len(TEXT)
    assert decompress_payload(packed) == TEXT


def test_compress_declines_when_it_would_not_help_or_would_be_refused() -> None:
    assert compress_payload(os.urandom(1000)) is None  # not smaller
    assert compress_payload(bytes(100_000)) is None  # ratio far above 10:1
    assert compress_payload(b"") is None


def test_ratio_above_ten_to_one_is_413() -> None:
    packed = zstandard.ZstdCompressor().compress(bytes(10_000))
    with pytest.raises(OapError) as info:
        decompress_payload(packed)
    assert info.value.status == 413
    assert not info.value.fatal


def test_size_above_eight_max_frames_is_413_even_within_the_ratio() -> None:
    rng = os.urandom(32_000).hex().encode()  # about 2:1
    packed = zstandard.ZstdCompressor(write_content_size=False).compress(rng)
    assert len(rng) <= 10 * len(packed)
    assert decompress_payload(packed, max_frame=len(rng) // 8) == rng
    with pytest.raises(OapError) as info:
        decompress_payload(packed, max_frame=len(rng) // 8 - 1)
    assert info.value.status == 413


def test_a_bomb_is_stopped_without_materialising_it() -> None:
    # 100 KiB of incompressible bytes buy a 1 MiB ratio budget; then 1 GiB of zeros.
    cctx = zstandard.ZstdCompressor(write_content_size=False)
    chunks = cctx.compressobj()
    packed = chunks.compress(os.urandom(100_000))
    for _ in range(64):
        packed += chunks.compress(bytes(16 << 20))
    packed += chunks.flush()
    limit = decompressed_limit(len(packed))
    tracemalloc.start()
    try:
        with pytest.raises(OapError) as info:
            decompress_payload(packed)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.status == 413
    assert peak < 2 * limit


def test_a_declared_content_size_over_the_limit_is_refused_up_front() -> None:
    packed = zstandard.ZstdCompressor().compress(bytes(1 << 24))
    with pytest.raises(OapError) as info:
        decompress_payload(packed)
    assert info.value.status == 413


@pytest.mark.parametrize(
    "payload",
    [
        b"not zstd at all",
        zstandard.ZstdCompressor().compress(TEXT)[:-4],  # truncated
        zstandard.ZstdCompressor().compress(TEXT) + b"junk",  # trailing bytes
    ],
    ids=["garbage", "truncated", "trailing"],
)
def test_malformed_zstd_is_400(payload: bytes) -> None:
    with pytest.raises(OapError) as info:
        decompress_payload(payload)
    assert info.value.status == 400


def test_concatenated_zstd_frames_are_one_payload() -> None:
    packed = zstandard.ZstdCompressor().compress(TEXT)
    assert decompress_payload(packed + packed) == TEXT + TEXT


def test_an_empty_comp_payload_is_empty() -> None:
    assert decompress_payload(b"") == b""


def test_a_window_larger_than_the_output_bound_is_refused() -> None:
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=24)
    data = os.urandom(20_000).hex().encode()
    packed = zstandard.ZstdCompressor(compression_params=params).compressobj()
    body = packed.compress(data) + packed.flush()
    assert decompress_payload(body, max_frame=1 << 21) == data  # 16 MiB window allowed
    with pytest.raises(OapError) as info:
        decompress_payload(body, max_frame=1 << 20)  # 8 MiB bound, 16 MiB window
    assert info.value.status == 413
