"""Key files: node identity, keyring and revocation list on disk, permissions, locking."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ron.auth import KeyRing, NodeIdentity, RevocationList
from ron.auth.files import AuthPaths
from ron.auth.identity import verify_signature
from ron.proto.envelope import ErrorCode, RonError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_node_identity_is_stored_0600_and_stable(tmp_path: Path) -> None:
    paths = AuthPaths(tmp_path / "data")
    old = os.umask(0)  # even a permissive umask must not expose the key
    try:
        identity, made = NodeIdentity.load_or_create(paths.node_key)
    finally:
        os.umask(old)
    assert made
    assert _mode(paths.node_key) == 0o600
    assert _mode(paths.auth_dir) == 0o700
    again, made = NodeIdentity.load_or_create(paths.node_key)
    assert not made
    assert again.node_id == identity.node_id
    assert identity.node_id.startswith("b3:") and len(identity.node_id) == 67
    assert paths.node_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert identity.node_id in repr(identity) and "PRIVATE" not in repr(identity)
    sig = identity.sign(b"hello")
    assert verify_signature(identity.public_key, sig, b"hello")
    assert not verify_signature(identity.public_key, sig, b"hellO")
    # No temp debris next to the key.
    assert sorted(p.name for p in paths.auth_dir.iterdir()) == [".node.key.lock", "node.key"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    paths = AuthPaths(tmp_path / "data")
    NodeIdentity.load_or_create(paths.node_key)
    KeyRing(paths.keyring).ensure()
    for path in (paths.node_key, paths.keyring):
        os.chmod(path, mode)
    with pytest.raises(RonError) as info:
        NodeIdentity.load(paths.node_key)
    assert info.value.code is ErrorCode.INTERNAL
    assert "group or others" in info.value.message
    with pytest.raises(RonError):
        KeyRing(paths.keyring)


def test_a_non_ed25519_or_garbage_key_file_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "node.key"
    path.write_bytes(b"garbage")
    os.chmod(path, 0o600)
    with pytest.raises(RonError):
        NodeIdentity.load(path)
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(other)
    with pytest.raises(RonError) as info:
        NodeIdentity.load(path)
    assert "Ed25519" in info.value.message


def test_keyring_persists_rotation(tmp_path: Path) -> None:
    paths = AuthPaths(tmp_path / "data")
    ring = KeyRing(paths.keyring)
    assert ring.current() is None and ring.keys == ()
    first, made = ring.ensure(1000)
    assert made and _mode(paths.keyring) == 0o600
    same, made = ring.ensure(2000)
    assert same.key_id == first.key_id and not made
    second, retired = ring.rotate(3000)
    assert retired is not None and retired.key_id == first.key_id and retired.retired == 3000
    reread = KeyRing(paths.keyring)
    assert [k.key_id for k in reread.keys] == [first.key_id, second.key_id]
    assert reread.current() is not None and reread.current().key_id == second.key_id  # type: ignore[union-attr]
    assert bytes(reread.get(first.key_id).secret) == bytes(first.secret)  # type: ignore[union-attr]
    assert bytes(first.secret).hex() not in repr(first)
    assert retired.usable_at(3000 + 9, overlap_s=10)
    assert not retired.usable_at(3000 + 10, overlap_s=10)
    assert retired.valid_until(10) == 3010 and second.valid_until(10) is None


def test_keyring_rejects_corrupt_files(tmp_path: Path) -> None:
    path = tmp_path / "keyring.json"
    for content in (
        b"{",
        b"[]",
        b'{"format": "ron-keyring/1", "keys": [{"id": "k1", "secret": "AAAA", "created": 1}]}',
        b'{"format": "ron-keyring/1", "keys": [{"id": "bad id", "secret": "", "created": 1}]}',
    ):
        path.write_bytes(content)
        os.chmod(path, 0o600)
        with pytest.raises(RonError) as info:
            KeyRing(path)
        assert info.value.code is ErrorCode.INTERNAL


def test_revocation_list_persists_and_is_idempotent(tmp_path: Path) -> None:
    path = AuthPaths(tmp_path / "data").revocations
    revs = RevocationList(path)
    assert revs.seq == 0
    a, b = "a" * 32, "b" * 32
    assert revs.revoke(a, 10)[1]
    assert revs.revoke(b, 11)[0].seq == 2
    assert revs.revoke(a, 12) == (revs.entries_since(0)[0], False)
    reread = RevocationList(path)
    assert reread.seq == 2 and reread.is_revoked(a) and reread.is_revoked(b)
    assert not reread.is_revoked("c" * 32)
    with pytest.raises(RonError) as info:
        revs.revoke("not-an-id")
    assert info.value.code is ErrorCode.BAD_REQUEST


_CHILD = """
import sys
from pathlib import Path
from ron.auth import NodeIdentity, RevocationList
from ron.auth.files import AuthPaths
paths = AuthPaths(Path(sys.argv[1]))
identity, _ = NodeIdentity.load_or_create(paths.node_key)
revs = RevocationList(paths.revocations)
for i in range(5):
    revs.revoke(f"{int(sys.argv[2]):02x}{i:030x}")
print(identity.node_id)
"""


def test_concurrent_processes_agree_on_identity_and_lose_no_revocation(tmp_path: Path) -> None:
    data = tmp_path / "data"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(data), str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(4)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    assert len({o.strip() for o, _ in outs}) == 1  # one identity for all
    revs = RevocationList(AuthPaths(data).revocations)
    assert revs.seq == 20
    entries = revs.entries_since(0)
    assert [e.seq for e in entries] == list(range(1, 21))
    assert len({e.token_id for e in entries}) == 20


def test_rotation_overlap_config() -> None:
    from ron.kernel.config import ConfigError, load_config

    assert load_config().caps.rotation_overlap_s == 7 * 86400
    env = {"RON_CAPS__ROTATION_OVERLAP_S": "0"}
    assert load_config(env=env).caps.rotation_overlap_s == 0
    for bad in ("-1", str(30 * 86400 + 1), "soon"):
        with pytest.raises(ConfigError, match="rotation_overlap_s"):
            load_config(env={"RON_CAPS__ROTATION_OVERLAP_S": bad})
