"""The audit log's hash chain: any edited, removed or reordered record is found and named."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ron.auth import Authority, token_caveats
from ron.auth.audit import GENESIS, AuditLog, head_path, verify
from ron.auth.files import AuthPaths
from ron.proto.envelope import ErrorCode, RonError

T0 = 1_800_000_000.0


def _log(tmp_path: Path, n: int = 3) -> Path:
    path = tmp_path / "audit" / "audit.jsonl"
    log = AuditLog(path, actor="test")
    for i in range(n):
        log.append("mint", {"token_id": f"{i:032x}", "caveats": [f"tenant=t{i}"]}, now=T0 + i)
    return path


def test_append_builds_a_chain_that_verifies(tmp_path: Path) -> None:
    path = _log(tmp_path, 3)
    lines = path.read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["prev"] == GENESIS
    assert records[1]["prev"] == records[0]["hash"]
    assert records[0]["ts"] == "2027-01-15T08:00:00.000Z"
    assert list(records[0]) == ["seq", "ts", "event", "actor", "data", "prev", "hash"]
    report = verify(path)
    assert report.ok and report.records == 3 and report.head == records[2]["hash"]
    assert json.loads(head_path(path).read_bytes()) == {"seq": 3, "hash": records[2]["hash"]}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_an_empty_or_absent_log_verifies(tmp_path: Path) -> None:
    assert verify(tmp_path / "none.jsonl").ok
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert verify(tmp_path / "empty.jsonl").ok


def test_every_single_byte_edit_names_the_edited_record(tmp_path: Path) -> None:
    path = _log(tmp_path, 3)
    original = path.read_bytes()
    starts = [0]
    for i, b in enumerate(original):
        if b == ord("\n"):
            starts.append(i + 1)
    for pos in range(len(original)):
        edited = bytearray(original)
        edited[pos] ^= 0x01
        path.write_bytes(bytes(edited))
        report = verify(path)
        assert not report.ok, f"edit at byte {pos} went unnoticed"
        expected_line = sum(1 for s in starts if s <= pos)
        assert report.line == expected_line, (pos, report)
    path.write_bytes(original)
    assert verify(path).ok


def test_removed_records_are_found(tmp_path: Path) -> None:
    path = _log(tmp_path, 4)
    lines = path.read_bytes().splitlines(keepends=True)
    for gone in range(4):
        path.write_bytes(b"".join(lines[:gone] + lines[gone + 1 :]))
        report = verify(path)
        assert not report.ok
        assert report.line == gone + 1, (gone, report)
    path.write_bytes(b"")
    report = verify(path)
    assert not report.ok and report.line == 1 and "truncated" in (report.reason or "")


def test_reordered_records_are_found(tmp_path: Path) -> None:
    path = _log(tmp_path, 4)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(b"".join(lines))
    report = verify(path)
    assert not report.ok and report.line == 2
    assert "removed, inserted or reordered" in (report.reason or "")


def test_a_rewritten_record_with_a_fresh_hash_breaks_the_chain(tmp_path: Path) -> None:
    from ron.auth.audit import record_line

    path = _log(tmp_path, 3)
    lines = path.read_bytes().splitlines(keepends=True)
    doc = json.loads(lines[1])
    forged = record_line(2, doc["ts"], "mint", "test", {"token_id": "forged"}, doc["prev"])
    path.write_bytes(lines[0] + forged + b"\n" + lines[2])
    report = verify(path)
    assert not report.ok and report.line == 3 and "chain broken" in (report.reason or "")


def test_head_file_rules(tmp_path: Path) -> None:
    path = _log(tmp_path, 3)
    head = head_path(path)
    lines = path.read_bytes().splitlines()
    second = json.loads(lines[1])["hash"]
    first = json.loads(lines[0])["hash"]
    # One behind: a crash between the append and the head update.
    head.write_text(json.dumps({"seq": 2, "hash": second}))
    assert verify(path).ok
    head.write_text(json.dumps({"seq": 2, "hash": first}))
    assert verify(path).line == 2
    head.write_text(json.dumps({"seq": 1, "hash": first}))
    assert not verify(path).ok
    head.unlink()
    report = verify(path)
    assert not report.ok and "missing" in (report.reason or "")


def test_a_torn_tail_is_reported_then_cut_by_the_next_append(tmp_path: Path) -> None:
    path = _log(tmp_path, 2)
    with path.open("ab") as f:
        f.write(b'{"seq":3,"ts":"2027-')
    report = verify(path)
    assert not report.ok and report.line == 3 and "torn" in (report.reason or "")
    AuditLog(path).append("revoke", {"token_id": "x"})
    report = verify(path)
    assert report.ok and report.records == 3


def test_a_torn_first_record_is_cut(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"seq":1,')
    AuditLog(path).append("rotate", {})
    assert verify(path).ok and verify(path).records == 1


def test_append_refuses_bad_events_and_data(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    for event in ("", "Mint", "a b", "x" * 40):
        with pytest.raises(RonError) as info:
            log.append(event, {})
        assert info.value.code is ErrorCode.BAD_REQUEST
    with pytest.raises(RonError):
        log.append("mint", {"x": object()})
    with pytest.raises(RonError):
        log.append("mint", {"x": float("nan")})
    with pytest.raises(RonError):
        log.append("mint", {"x": "y" * 20_000})
    assert verify(tmp_path / "audit.jsonl").ok


def test_append_refuses_to_chain_onto_a_broken_tail(tmp_path: Path) -> None:
    path = _log(tmp_path, 1)
    path.write_bytes(b"garbage\n")
    with pytest.raises(RonError) as info:
        AuditLog(path).append("mint", {})
    assert info.value.code is ErrorCode.INTERNAL


def test_authority_actions_are_audited_without_secrets(tmp_path: Path) -> None:
    authority = Authority(tmp_path / "data", overlap_s=60, actor="cli:test")
    token = authority.mint(token_caveats(tenant="acme", methods=["GET"]), now=T0)
    authority.rotate(now=T0 + 1)
    authority.revoke(token.token_id_hex, now=T0 + 2)
    authority.revoke(token.token_id_hex, now=T0 + 3)  # already revoked: not a new event
    path = AuthPaths(tmp_path / "data").audit_log
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert [r["event"] for r in records] == ["rotate", "mint", "rotate", "revoke"]
    assert records[1]["data"]["token_id"] == token.token_id_hex
    assert records[1]["data"]["caveats"] == ["tenant=acme", "methods=GET"]
    assert records[3]["data"] == {"token_id": token.token_id_hex, "seq": 1}
    assert all(r["actor"] == "cli:test" for r in records)
    text = path.read_text()
    assert token.serialize() not in text
    assert token.signature.hex() not in text
    for key in authority.keyring.keys:
        assert base64.urlsafe_b64encode(bytes(key.secret)).rstrip(b"=").decode() not in text
        assert bytes(key.secret).hex() not in text
    assert verify(path).ok


_CHILD = """
import sys
from pathlib import Path
from ron.auth.audit import AuditLog
log = AuditLog(Path(sys.argv[1]), actor="p" + sys.argv[2])
for i in range(10):
    log.append("config_reload", {"version": i})
"""


def test_concurrent_appenders_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    procs = [
        subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(n)], stderr=subprocess.PIPE)
        for n in range(3)
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    report = verify(path)
    assert report.ok and report.records == 30
