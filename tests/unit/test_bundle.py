"""Bundles: layout, the REFERENCE §2 encoder vectors, and the crash-safe offline builder."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO, cast

import blake3
import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from ron.proto.address import Address, address_of
from ron.proto.bundle import (
    BROTLI_NAME,
    CHUNK_SIZE,
    MANIFEST_NAME,
    PAYLOAD_NAME,
    ZSTD_NAME,
    BundleWriter,
    brotli_encode,
    brotli_encode_stream,
    bundle_dir,
    bundle_relpath,
    is_text_like,
    write_bundle_offline,
    zstd_encode,
    zstd_encode_stream,
)
from ron.proto.envelope import ErrorCode, RonError
from ron.proto.manifest import Manifest, Payment, Relations

REL_TEST = b"rel-test\n"
REL_TEST_HEX = "0900f0d8c6d7f6f5f665bcf9961f965477a4020b14846fbf6b07081e6dcb9bef"
REL_TEST_ZST = bytes.fromhex("28b52ffd006049000072656c2d746573740a")
REL_TEST_BR = bytes.fromhex("0b048072656c2d746573740a03")
NOW = datetime(2025, 9, 1, 12, 0, 0, 123456, tzinfo=UTC)


def chunked(data: bytes, size: int) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def text_corpus(size: int) -> bytes:
    """Compressible, non-repetitive-looking text (deterministic)."""
    words = [b"alpha", b"beta", b"gamma", b"delta\n", b'{"k": 1}', b"<svg/>"]
    out = bytearray()
    i = 0
    while len(out) < size:
        out += words[(i * 7 + i // 5) % len(words)] + b" "
        i += 1
    return bytes(out[:size])


# --- REFERENCE §2 vectors ---------------------------------------------------------------


def test_reference_payload_hash() -> None:
    assert address_of(REL_TEST).hex == REL_TEST_HEX


def test_zstd_encode_reproduces_the_reference_bytes() -> None:
    assert zstd_encode(REL_TEST) == REL_TEST_ZST


def test_brotli_encode_reproduces_the_reference_bytes() -> None:
    assert brotli_encode(REL_TEST) == REL_TEST_BR


def test_streaming_encoders_reproduce_the_reference_bytes_in_any_chunking() -> None:
    for size in (1, 2, 4, 9):
        assert b"".join(zstd_encode_stream(chunked(REL_TEST, size))) == REL_TEST_ZST
        assert b"".join(brotli_encode_stream(chunked(REL_TEST, size))) == REL_TEST_BR


def test_built_bundle_matches_the_reference_example(tmp_path: Path) -> None:
    manifest = write_bundle_offline(
        tmp_path,
        io.BytesIO(REL_TEST),
        tld="text",
        mime="text/plain",
        original_filename="rel.txt",
        now=NOW,
    )
    assert manifest.hash_hex == REL_TEST_HEX
    directory = tmp_path / "objects" / "text" / "09" / f"{REL_TEST_HEX}.text"
    assert (directory / ZSTD_NAME).read_bytes() == REL_TEST_ZST
    assert (directory / BROTLI_NAME).read_bytes() == REL_TEST_BR
    zst = manifest.encoding("zstd")
    br = manifest.encoding("br")
    assert zst is not None and br is not None
    assert (zst.level, zst.bytes, zst.hash_hex) == (15, 18, blake3.blake3(REL_TEST_ZST).hexdigest())
    assert (br.level, br.bytes, br.hash_hex) == (9, 13, blake3.blake3(REL_TEST_BR).hexdigest())


# --- encoders ---------------------------------------------------------------------------


@given(data=st.binary(max_size=5000), size=st.integers(1, 700))
@settings(max_examples=25, deadline=None)
def test_encoder_output_does_not_depend_on_chunking(data: bytes, size: int) -> None:
    zst = b"".join(zstd_encode_stream(chunked(data, size)))
    br = b"".join(brotli_encode_stream(chunked(data, size)))
    assert zst == zstd_encode(data)
    assert br == brotli_encode(data)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(zst) == data
    assert brotli.decompress(br) == data


def test_brotli_output_is_stable_for_large_single_chunks() -> None:
    # libbrotli compresses one huge process() call differently from many small ones;
    # the encoder re-blocks input so both give the same file.
    data = text_corpus(3 * 1024 * 1024 + 17)
    one_shot = brotli_encode(data)
    assert b"".join(brotli_encode_stream(chunked(data, 1000))) == one_shot
    assert b"".join(brotli_encode_stream(chunked(data, 1_000_000))) == one_shot
    assert brotli.decompress(one_shot) == data


def test_stream_encoders_are_lazy() -> None:
    def endless() -> Iterator[bytes]:
        while True:
            yield b"x" * CHUNK_SIZE

    stream = zstd_encode_stream(endless())
    assert next(stream) is not None  # would never return if the input were gathered first


# --- layout -----------------------------------------------------------------------------


def test_bundle_relpath_fans_out_by_tld_and_first_two_hex_digits() -> None:
    addr = Address(REL_TEST_HEX, "image")
    assert bundle_relpath(addr) == PurePosixPath(f"objects/image/09/{REL_TEST_HEX}.image")


def test_bundle_relpath_without_tld_uses_bin() -> None:
    assert bundle_relpath(Address(REL_TEST_HEX)) == PurePosixPath(
        f"objects/bin/09/{REL_TEST_HEX}.bin"
    )


def test_bundle_dir_is_under_the_data_dir(tmp_path: Path) -> None:
    addr = Address(REL_TEST_HEX, "text")
    expected = tmp_path / "objects" / "text" / "09" / f"{REL_TEST_HEX}.text"
    assert bundle_dir(tmp_path, addr) == expected


@pytest.mark.parametrize(
    "mime",
    [
        "text/plain",
        "text/html; charset=utf-8",
        "TEXT/CSS",
        "application/json",
        "application/javascript",
        "text/javascript",
        "image/svg+xml",
        "application/ld+json",
        "application/atom+xml",
        "application/xml",
    ],
)
def test_text_like_mime_types_get_encodings(mime: str) -> None:
    assert is_text_like(mime)


@pytest.mark.parametrize(
    "mime",
    ["image/png", "video/mp4", "application/octet-stream", "application/zip", "", "text", "/x"],
)
def test_binary_mime_types_do_not(mime: str) -> None:
    assert not is_text_like(mime)


# --- offline builder --------------------------------------------------------------------


def build(tmp_path: Path, data: bytes, **kwargs: object) -> Manifest:
    fields: dict[str, object] = {
        "tld": "text",
        "mime": "text/plain",
        "original_filename": "a.txt",
        "now": NOW,
    }
    fields.update(kwargs)
    return write_bundle_offline(tmp_path, io.BytesIO(data), **fields)  # type: ignore[arg-type]


def staging_entries(data_dir: Path) -> list[Path]:
    return list((data_dir / "tmp").iterdir())


def test_offline_build_writes_a_complete_verified_bundle(tmp_path: Path) -> None:
    data = text_corpus(200_000)
    manifest = build(
        tmp_path,
        data,
        license="CC0-1.0",
        relations=Relations(source="unit-test"),
        payment=Payment(required=False, currency="USD", price_model="flat", price=1.0, wallet="w"),
    )
    directory = bundle_dir(tmp_path, manifest.address)
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [PAYLOAD_NAME, MANIFEST_NAME, ZSTD_NAME, BROTLI_NAME]
    )
    assert (directory / PAYLOAD_NAME).read_bytes() == data
    assert manifest.hash_hex == blake3.blake3(data).hexdigest()
    assert manifest.bytes == len(data)
    assert manifest.created_utc == "2025-09-01T12:00:00Z"
    assert Manifest.parse((directory / MANIFEST_NAME).read_bytes()) == manifest
    for enc in manifest.encodings:
        stored = (directory / enc.filename).read_bytes()
        assert len(stored) == enc.bytes
        assert blake3.blake3(stored).hexdigest() == enc.hash_hex
    assert (
        zstandard.ZstdDecompressor()
        .decompressobj()
        .decompress((directory / ZSTD_NAME).read_bytes())
        == data
    )
    assert brotli.decompress((directory / BROTLI_NAME).read_bytes()) == data
    assert staging_entries(tmp_path) == []


def test_binary_payload_gets_no_encodings(tmp_path: Path) -> None:
    manifest = build(tmp_path, os.urandom(1000), tld="image", mime="image/png")
    directory = bundle_dir(tmp_path, manifest.address)
    assert manifest.encodings == ()
    assert sorted(p.name for p in directory.iterdir()) == [MANIFEST_NAME, PAYLOAD_NAME]


def test_missing_tld_files_the_bundle_under_bin(tmp_path: Path) -> None:
    manifest = build(tmp_path, b"x", tld=None, mime="application/octet-stream")
    assert manifest.tld == "bin"
    assert bundle_dir(tmp_path, manifest.address).is_dir()


def test_empty_payload_is_a_valid_bundle(tmp_path: Path) -> None:
    manifest = build(tmp_path, b"")
    assert manifest.bytes == 0
    assert manifest.hash_hex == blake3.blake3(b"").hexdigest()
    directory = bundle_dir(tmp_path, manifest.address)
    assert brotli.decompress((directory / BROTLI_NAME).read_bytes()) == b""


def test_source_may_be_a_path(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(REL_TEST)
    manifest = write_bundle_offline(
        tmp_path / "data", source, tld="text", mime="text/plain", original_filename="in.txt"
    )
    assert manifest.hash_hex == REL_TEST_HEX


class ChunkCheckingReader(io.RawIOBase):
    """A source that refuses reads larger than one chunk and counts them."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.reads = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        assert 0 < n <= CHUNK_SIZE, "the builder must read in bounded chunks"
        self.reads += 1
        take = min(n, self.left)
        self.left -= take
        return b"z" * take


def test_source_is_read_in_64_kib_chunks(tmp_path: Path) -> None:
    size = 5 * CHUNK_SIZE + 3
    source = ChunkCheckingReader(size)
    manifest = write_bundle_offline(
        tmp_path, cast(BinaryIO, source), tld="text", mime="text/plain", original_filename="z"
    )
    assert manifest.bytes == size
    assert source.reads == 7  # six data reads and the empty one that ends the stream


def test_same_content_twice_keeps_the_first_bundle(tmp_path: Path) -> None:
    first = build(tmp_path, REL_TEST, original_filename="first.txt")
    later = datetime(2030, 1, 1, tzinfo=UTC)
    second = build(tmp_path, REL_TEST, original_filename="second.txt", now=later)
    assert second == first
    directory = bundle_dir(tmp_path, first.address)
    assert Manifest.parse((directory / MANIFEST_NAME).read_bytes()).original_filename == "first.txt"
    assert staging_entries(tmp_path) == []


def test_concurrent_publishers_of_the_same_content_agree(tmp_path: Path) -> None:
    one = BundleWriter(tmp_path, tld="text", mime="text/plain", original_filename="one")
    two = BundleWriter(tmp_path, tld="text", mime="text/plain", original_filename="two")
    one.write(REL_TEST)
    two.write(REL_TEST)
    first = one.commit(now=NOW)
    second = two.commit(now=NOW)
    assert second == first and first.original_filename == "one"
    assert one.published_new and not two.published_new
    assert staging_entries(tmp_path) == []


def test_a_damaged_existing_bundle_is_replaced(tmp_path: Path) -> None:
    directory = bundle_dir(tmp_path, Address(REL_TEST_HEX, "text"))
    directory.mkdir(parents=True)
    (directory / MANIFEST_NAME).write_text("garbage")
    (directory / PAYLOAD_NAME).write_bytes(b"wrong")
    manifest = build(tmp_path, REL_TEST)
    assert (directory / PAYLOAD_NAME).read_bytes() == REL_TEST
    assert Manifest.parse((directory / MANIFEST_NAME).read_bytes()) == manifest
    assert staging_entries(tmp_path) == []


def test_an_existing_bundle_with_a_truncated_payload_is_replaced(tmp_path: Path) -> None:
    manifest = build(tmp_path, REL_TEST)
    directory = bundle_dir(tmp_path, manifest.address)
    (directory / PAYLOAD_NAME).write_bytes(b"rel")
    build(tmp_path, REL_TEST)
    assert (directory / PAYLOAD_NAME).read_bytes() == REL_TEST


def test_a_file_in_the_bundle_path_is_replaced(tmp_path: Path) -> None:
    directory = bundle_dir(tmp_path, Address(REL_TEST_HEX, "text"))
    directory.parent.mkdir(parents=True)
    directory.write_bytes(b"not a directory")
    build(tmp_path, REL_TEST)
    assert (directory / PAYLOAD_NAME).read_bytes() == REL_TEST


def test_bad_metadata_fails_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(RonError) as info:
        build(tmp_path, REL_TEST, mime="text/plain\r\nX-Evil: 1")
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert not (tmp_path / "objects").exists()
    with pytest.raises(RonError):
        build(tmp_path, REL_TEST, tld="../etc")
    with pytest.raises(RonError):
        build(tmp_path, REL_TEST, original_filename="a/b")


class FailingReader(io.RawIOBase):
    def __init__(self) -> None:
        self.calls = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self.calls += 1
        if self.calls > 2:
            raise OSError("disk gone")
        return b"a" * n


def test_a_failing_source_leaves_no_bundle_and_no_staging(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="disk gone"):
        write_bundle_offline(
            tmp_path,
            cast(BinaryIO, FailingReader()),
            tld="text",
            mime="text/plain",
            original_filename="x",
        )
    assert not (tmp_path / "objects").exists()
    assert staging_entries(tmp_path) == []


def test_commit_with_a_wrong_expected_address_publishes_nothing(tmp_path: Path) -> None:
    with BundleWriter(tmp_path, tld="text", mime="text/plain", original_filename="x") as writer:
        writer.write(REL_TEST)
        with pytest.raises(RonError) as info:
            writer.commit(expect=Address("0" * 64))
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert not (tmp_path / "objects").exists()
    assert staging_entries(tmp_path) == []


def test_commit_with_the_right_expected_address_publishes(tmp_path: Path) -> None:
    with BundleWriter(tmp_path, tld="text", mime="text/plain", original_filename="x") as writer:
        writer.write(REL_TEST)
        assert writer.nbytes == len(REL_TEST)
        manifest = writer.commit(expect=Address(REL_TEST_HEX, "text"))
    assert bundle_dir(tmp_path, manifest.address).is_dir()


def test_leaving_the_writer_without_commit_discards_the_staging(tmp_path: Path) -> None:
    with BundleWriter(tmp_path, tld="text", mime="text/plain", original_filename="x") as writer:
        writer.write(b"abandoned")
        staging = writer.staging_path
        assert staging.is_dir()
    assert not staging.exists()
    with pytest.raises(RuntimeError):
        writer.write(b"more")


def test_staging_happens_under_the_data_dir_tmp(tmp_path: Path) -> None:
    writer = BundleWriter(tmp_path, mime="text/plain", original_filename="x")
    try:
        assert writer.staging_path.parent == tmp_path / "tmp"
        assert not (tmp_path / "objects").exists()  # nothing visible until commit
    finally:
        writer.abort()
