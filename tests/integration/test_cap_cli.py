"""``ron cap ...`` and ``ron audit verify`` as an owner runs them, offline on a data dir."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from ron.auth import Token, Verifier
from ron.auth.files import AuthPaths
from ron.proto.envelope import ErrorCode, RonError
from support.node import RON

OVERLAP = "604800"


def ron(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RON_CAPS__ROTATION_OVERLAP_S": OVERLAP}
    return subprocess.run(
        [RON, *args], capture_output=True, text=True, timeout=120, input=stdin, env=env
    )


def ok(*args: str, stdin: str | None = None) -> str:
    result = ron(*args, stdin=stdin)
    assert result.returncode == 0, (args, result.stderr)
    return result.stdout


def last_line(text: str) -> str:
    return text.rstrip("\n").splitlines()[-1]


def test_owner_workflow_and_audit_verify(tmp_path: Path) -> None:
    data = tmp_path / "data"
    dd = ("--data-dir", str(data))
    paths = AuthPaths(data)

    node_id = last_line(ok("cap", "node-id", *dd))
    assert node_id.startswith("b3:") and len(node_id) == 67
    out = ok(
        "cap", "mint", "--tenant", "acme", "--methods", "GET,PUT", "--path", "/o/",
        "--ttl", "1h", "--aud", "self", "--max-bytes", "1048576", *dd,
    )  # fmt: skip
    token = last_line(out)
    parsed = Token.parse(token)
    assert f"token_id: {parsed.token_id_hex}" in out

    # The token the CLI minted verifies in-process against the same files.
    verifier = Verifier.from_data_dir(data, overlap_s=float(OVERLAP))
    grant = verifier.check(token, method="PUT", path="/o/x", audience=node_id, nbytes=10)
    assert grant.tenant == "acme" and grant.max_bytes == 1048576
    with pytest.raises(RonError) as info:
        verifier.check(token, method="DELETE", path="/o/x", audience=node_id)
    assert info.value.code is ErrorCode.FORBIDDEN

    # inspect: caveats, expiry, ids; never the key or the signature.
    shown = json.loads(ok("cap", "inspect", "--json", token, *dd))
    assert shown["key_id"] == parsed.key_id and shown["token_id"] == parsed.token_id_hex
    assert shown["tenant"] == "acme" and shown["status"] == "valid here now"
    assert shown["caveats"][:4] == [
        "tenant=acme",
        shown["caveats"][1],
        f"aud={node_id}",
        "methods=GET,PUT",
    ]
    expires = time.mktime(time.strptime(shown["expires"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert 3500 < expires - time.time() <= 3600
    text = ok("cap", "inspect", "-", *dd, stdin=token + "\n")
    secret = json.loads(paths.keyring.read_text())["keys"][0]["secret"]
    for leaked in (secret, parsed.signature.hex(), base64.b64encode(parsed.signature).decode()):
        assert leaked not in text and leaked not in json.dumps(shown)

    # attenuate offline (no data dir at all): narrower, same token id.
    child = last_line(ok("cap", "attenuate", token, "-c", "methods=GET", "-c", "path=/o/pub/"))
    assert Token.parse(child).token_id == parsed.token_id
    verifier.check(child, method="GET", path="/o/pub/a", audience=node_id)
    with pytest.raises(RonError) as info:
        verifier.check(child, method="PUT", path="/o/pub/a", audience=node_id)
    assert info.value.code is ErrorCode.FORBIDDEN

    # rotate: the old token still verifies (overlap), new ones use the new key.
    rotated = ok("cap", "rotate", *dd)
    assert f"retired key: {parsed.key_id}" in rotated
    verifier.check(token, method="GET", path="/o/x", audience=node_id)
    newer = Token.parse(last_line(ok("cap", "mint", "--tenant", "acme", *dd)))
    assert newer.key_id != parsed.key_id

    # revoke (by token id) applies to the verifier that was already running.
    revoked = ok("cap", "revoke", parsed.token_id_hex, *dd)
    assert "revocation seq 1" in revoked
    assert "already revoked" in ok("cap", "revoke", child, *dd)
    for t in (token, child):
        with pytest.raises(RonError) as info:
            verifier.check(t, method="GET", path="/o/pub/a", audience=node_id)
        assert info.value.code is ErrorCode.UNAUTHORIZED
    assert verifier.revocation_seq == 1
    assert "refused: token has been revoked" in ok("cap", "inspect", token, *dd)

    # The audit log verifies...
    verified = ok("audit", "verify", *dd)
    assert "ok: 5 records" in verified  # rotate(first key), mint, rotate, mint, revoke
    events = [json.loads(line)["event"] for line in paths.audit_log.read_text().splitlines()]
    assert events == ["rotate", "mint", "rotate", "mint", "revoke"]
    assert token not in paths.audit_log.read_text()

    # ...and fails, naming the record, after one byte of it is edited.
    raw = bytearray(paths.audit_log.read_bytes())
    second_line_start = raw.index(b"\n") + 1
    at = raw.index(b"acme", second_line_start)
    raw[at] = ord("b")
    paths.audit_log.write_bytes(bytes(raw))
    failed = ron("audit", "verify", *dd)
    assert failed.returncode == 1
    assert "record 2 (line 2)" in failed.stderr
    assert "modified" in failed.stderr


def test_cli_refuses_bad_input(tmp_path: Path) -> None:
    dd = ("--data-dir", str(tmp_path / "data"))
    missing_tenant = ron("cap", "mint", *dd)
    assert missing_tenant.returncode == 2
    bad_ttl = ron("cap", "mint", "--tenant", "a", "--ttl", "soon", *dd)
    assert bad_ttl.returncode == 2 and "duration" in bad_ttl.stderr
    bad_path = ron("cap", "mint", "--tenant", "a", "--path", "/o/../x", *dd)
    assert bad_path.returncode == 1 and "path" in bad_path.stderr
    garbage = ron("cap", "inspect", "!!!not-a-token")
    assert garbage.returncode == 2 and "invalid token" in garbage.stderr
    # A keyring others can read is refused, not used.
    ok("cap", "mint", "--tenant", "a", *dd)
    keyring = AuthPaths(tmp_path / "data").keyring
    keyring.chmod(0o644)
    loose = ron("cap", "mint", "--tenant", "a", *dd)
    assert loose.returncode == 1 and "group or others" in loose.stderr
