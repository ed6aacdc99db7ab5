"""ContentReader's small-payload path: verified bytes are kept only while their file is
unchanged, and a changed file is read and checked again."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ron.kernel.metrics import Metrics
from ron.proto.envelope import ErrorCode, RonError
from ron.services.overlay import reader as reader_module
from ron.services.overlay.reader import ContentReader, ObjectInfo
from ron.services.storage.store import IntegrityError, ObjectStore

DATA = os.urandom(1000)


async def _put(tmp_path: Path) -> tuple[ContentReader, ObjectInfo, list[int], Metrics]:
    store = ObjectStore(tmp_path)
    store.ensure_dirs()

    async def chunks() -> AsyncIterator[bytes]:
        yield DATA

    manifest, _ = await store.put_stream(chunks(), tld="bin", mime="application/octet-stream")
    metrics = Metrics()
    reader = ContentReader(store, tmp_path / "index.db", metrics)
    reads = [0]
    read = reader._read_verified_small

    def counting(info: ObjectInfo) -> bytes:
        reads[0] += 1
        return read(info)

    reader._read_verified_small = counting  # type: ignore[method-assign]
    return reader, reader.stat(manifest.address), reads, metrics


async def test_a_just_written_file_is_read_every_time(tmp_path: Path) -> None:
    reader, info, reads, _ = await _put(tmp_path)
    assert reader.small_payload(info) == DATA
    assert reader.small_payload(info) == DATA
    assert reads[0] == 2  # two writes within one timestamp tick could look alike


async def test_kept_until_the_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader_module, "SETTLE_NS", 0)
    reader, info, reads, metrics = await _put(tmp_path)
    assert reader.small_payload(info) == DATA
    assert reader.small_payload(info) == DATA
    assert reads[0] == 1
    # Flip a byte in place, and move the timestamps on as any later write would.
    path = info.payload
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(10)
        f.write(bytes([DATA[10] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(IntegrityError):
        reader.small_payload(info)
    assert reads[0] == 2
    failures = metrics.registry.get_sample_value("integrity_failures_total", {"kind": "payload"})
    assert failures == 1.0
    path.unlink()
    with pytest.raises(RonError) as gone:
        reader.small_payload(info)
    assert gone.value.code is ErrorCode.NOT_FOUND


async def test_the_fast_paths_recheck_a_kept_file_only_every_recheck_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within the interval cached_small answers from memory without a stat: what it
    serves is the bytes that matched the address, whatever happened to the file; at the
    next check a changed file is no longer answered from memory."""
    monkeypatch.setattr(reader_module, "SETTLE_NS", 0)
    reader, info, _, _ = await _put(tmp_path)
    assert reader.small_payload(info) == DATA  # kept
    stats = [0]
    real_stat = os.stat

    def counting_stat(path: object, *args: object, **kw: object) -> os.stat_result:
        stats[0] += 1
        return real_stat(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(reader_module.os, "stat", counting_stat)
    assert reader.cached_small(info) == DATA  # checked now
    assert stats[0] == 1
    _corrupt(info)
    stats[0] = 0
    for _ in range(5):
        assert reader.cached_small(info) == DATA  # the verified bytes, never the file's
    assert stats[0] == 0
    reader._recheck_s = 0.0  # the interval has passed
    assert reader.cached_small(info) is None  # the change is seen: the ordinary path reads
    assert stats[0] == 1


async def test_with_no_interval_every_fast_answer_checks_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader_module, "SETTLE_NS", 0)
    store = ObjectStore(tmp_path)
    store.ensure_dirs()

    async def chunks() -> AsyncIterator[bytes]:
        yield DATA

    manifest, _ = await store.put_stream(chunks(), tld="bin", mime="application/octet-stream")
    reader = ContentReader(store, tmp_path / "index.db", Metrics(), recheck_s=0.0)
    info = reader.stat(manifest.address)
    assert reader.small_payload(info) == DATA
    assert reader.cached_small(info) == DATA
    _corrupt(info)
    assert reader.cached_small(info) is None


def _corrupt(info: ObjectInfo) -> None:
    """Flip a byte in place and move the timestamps on, as any later write would."""
    path = info.payload
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(10)
        f.write(bytes([DATA[10] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
