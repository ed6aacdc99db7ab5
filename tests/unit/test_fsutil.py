"""Crash-safe file helpers: atomic replace, no temp debris, durable directory creation."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ron.fsutil import atomic_write_bytes, atomic_write_text, fsync_dir, fsync_file, make_dirs


def test_atomic_write_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"one")
    atomic_write_text(target, "two ✓")
    assert target.read_text("utf-8") == "two ✓"
    assert os.listdir(tmp_path) == ["state.json"]


def test_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_atomic_write_respects_the_umask_not_0600(tmp_path: Path) -> None:
    target = tmp_path / "published"
    old = os.umask(0o022)
    try:
        atomic_write_bytes(target, b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_make_dirs_creates_the_chain_and_is_idempotent(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    make_dirs(deep)
    make_dirs(deep)
    assert deep.is_dir()


def test_make_dirs_refuses_a_file_in_the_way(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"")
    with pytest.raises(OSError):
        make_dirs(tmp_path / "a" / "b")


def test_fsync_helpers_accept_real_paths(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    fsync_file(tmp_path / "f")
    fsync_dir(tmp_path)
