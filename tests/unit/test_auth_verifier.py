"""Verifying tokens against real key and revocation files: the 401/403 acceptance points.

Each verifier here is a separate instance over the data dir's files, as in another
process of the node: changes made through the Authority (the CLI's path) reach it only
through the files.
"""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ron.auth import (
    Authority,
    Grant,
    Token,
    Verifier,
    bearer_token,
    caveat,
    mint_token,
    token_caveats,
)
from ron.auth.files import AuthPaths, write_secret
from ron.proto.envelope import ErrorCode, RonError

NOW = 1_800_000_000.0
TTL = 3600
OVERLAP = 86400.0
NODE = "b3:" + "1" * 64
OTHER_NODE = "b3:" + "2" * 64
ADDR = "b3:" + "ab" * 32


def _authority(data: Path) -> Authority:
    return Authority(data, overlap_s=OVERLAP, actor="test")


def _mint(authority: Authority, now: float = NOW, **kw: object) -> str:
    kw.setdefault("tenant", "acme")
    kw.setdefault("expires", int(now) + TTL)
    return authority.mint(token_caveats(**kw), now=now).serialize()  # type: ignore[arg-type]


def _code(fn: object, *args: object, **kwargs: object) -> ErrorCode:
    with pytest.raises(RonError) as info:
        fn(*args, **kwargs)  # type: ignore[operator]
    return info.value.code


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def authority(data: Path) -> Authority:
    return _authority(data)


@pytest.fixture
def verifier(authority: Authority, data: Path) -> Verifier:
    authority.keyring.ensure(NOW)
    return Verifier.from_data_dir(data, overlap_s=OVERLAP)


def test_a_valid_token_passes(authority: Authority, verifier: Verifier) -> None:
    token = _mint(authority, methods=["GET", "PUT"], path="/o/", aud=NODE, max_bytes=1000)
    grant = verifier.check(token, method="PUT", path="/o/x", audience=NODE, nbytes=10, now=NOW)
    assert isinstance(grant, Grant)
    assert grant.tenant == "acme"
    assert grant.token_id == Token.parse(token).token_id_hex
    assert grant.key_id == Token.parse(token).key_id
    assert grant.expires == int(NOW) + TTL
    assert grant.max_bytes == 1000
    assert [str(c) for c in grant.caveats] == [str(c) for c in Token.parse(token).caveats]


def test_every_flipped_byte_is_401(authority: Authority, verifier: Verifier) -> None:
    token = _mint(authority, methods=["GET"], aud=NODE)
    raw = Token.parse(token).to_bytes()
    for i in range(len(raw)):
        flipped = bytearray(raw)
        flipped[i] ^= 0x01
        text = base64.urlsafe_b64encode(bytes(flipped)).rstrip(b"=").decode()
        assert _code(verifier.check, text, method="GET", audience=NODE, now=NOW) is (
            ErrorCode.UNAUTHORIZED
        ), f"byte {i}"
    for i in range(len(token)):
        other = "B" if token[i] != "B" else "C"
        text = token[:i] + other + token[i + 1 :]
        assert _code(verifier.check, text, method="GET", audience=NODE, now=NOW) is (
            ErrorCode.UNAUTHORIZED
        ), f"char {i}"


def test_expired_token_is_401(authority: Authority, verifier: Verifier) -> None:
    token = _mint(authority)
    exp = NOW + TTL
    verifier.check(token, method="GET", audience=NODE, now=exp - 1)
    assert _code(verifier.check, token, method="GET", audience=NODE, now=exp) is (
        ErrorCode.UNAUTHORIZED
    )


def test_token_for_another_audience_is_401(authority: Authority, verifier: Verifier) -> None:
    token = _mint(authority, aud=OTHER_NODE)
    assert _code(verifier.check, token, method="GET", audience=NODE, now=NOW) is (
        ErrorCode.UNAUTHORIZED
    )
    assert _code(verifier.check, token, method="GET", audience=None, now=NOW) is (
        ErrorCode.UNAUTHORIZED
    )
    verifier.check(token, method="GET", audience=OTHER_NODE, now=NOW)
    unbound = _mint(authority)
    verifier.check(unbound, method="GET", audience=NODE, now=NOW)


def test_revoked_token_is_401_without_restart(
    authority: Authority, verifier: Verifier, data: Path
) -> None:
    token = _mint(authority)
    child = Token.parse(token).attenuate(caveat("methods", "GET")).serialize()
    verifier.check(token, method="GET", audience=NODE, now=NOW)
    verifier.check(child, method="GET", audience=NODE, now=NOW)
    # Revoked through a separate Authority over the same files (another process).
    entry, new = _authority(data).revoke(Token.parse(token).token_id_hex, now=NOW)
    assert new and entry.seq == 1
    for t in (token, child):
        with pytest.raises(RonError) as info:
            verifier.check(t, method="GET", audience=NODE, now=NOW)
        assert info.value.code is ErrorCode.UNAUTHORIZED
        assert "revoked" in info.value.message


def test_missing_and_garbage_tokens_are_401(verifier: Verifier) -> None:
    for bad in (None, "", b"", "not a token", "é", "A" * 10_000):
        assert _code(verifier.check, bad, method="GET", audience=NODE, now=NOW) is (
            ErrorCode.UNAUTHORIZED
        )


def test_unknown_key_and_foreign_key_are_401(verifier: Verifier) -> None:
    key_id = verifier.keyring.keys[0].key_id
    forged = mint_token(os.urandom(32), key_id, [caveat("tenant", "acme")])
    unknown = mint_token(os.urandom(32), "knope", [caveat("tenant", "acme")])
    for t in (forged, unknown):
        assert _code(verifier.check, t.serialize(), method="GET", audience=NODE, now=NOW) is (
            ErrorCode.UNAUTHORIZED
        )


def test_tokens_need_one_tenant_and_known_caveats(verifier: Verifier) -> None:
    key = verifier.keyring.keys[0]
    secret = bytes(key.secret)
    no_tenant = mint_token(secret, key.key_id, [caveat("methods", "GET")])
    unknown = mint_token(secret, key.key_id, [caveat("tenant", "a"), caveat("ip", "10.0.0.1")])
    two = mint_token(secret, key.key_id, [caveat("tenant", "a")]).attenuate(caveat("tenant", "b"))
    same = mint_token(secret, key.key_id, [caveat("tenant", "a")]).attenuate(caveat("tenant", "a"))
    for t in (no_tenant, unknown, two):
        assert _code(verifier.check, t.serialize(), method="GET", audience=NODE, now=NOW) is (
            ErrorCode.UNAUTHORIZED
        )
    assert verifier.check(same.serialize(), method="GET", audience=NODE, now=NOW).tenant == "a"


@pytest.mark.parametrize(
    ("mint_kw", "request_kw"),
    [
        ({"methods": ["GET"]}, {"method": "PUT", "path": "/put"}),
        ({"path": "/o/"}, {"method": "PUT", "path": "/put"}),
        ({"path": "/o/"}, {"method": "GET"}),
        ({"path": "/o/"}, {"method": "GET", "path": "/o/../v1/admin"}),
        ({"topic": "chat"}, {"method": "POST", "topic": "news"}),
        ({"topic": "chat"}, {"method": "POST", "path": "/put"}),
        ({"topic": "chat.*"}, {"method": "POST", "topic": "chatroom"}),
        ({"addr": ADDR}, {"method": "GET", "addr": "b3:" + "cd" * 32}),
        ({"addr": ADDR}, {"method": "GET", "addr": "garbage"}),
        ({"addr": ADDR}, {"method": "GET"}),
        ({"max_bytes": 100}, {"method": "PUT", "nbytes": 101}),
    ],
)
def test_caveats_that_do_not_cover_the_request_are_403(
    authority: Authority,
    verifier: Verifier,
    mint_kw: dict[str, object],
    request_kw: dict[str, object],
) -> None:
    token = _mint(authority, **mint_kw)
    assert _code(verifier.check, token, audience=NODE, now=NOW, **request_kw) is (
        ErrorCode.FORBIDDEN
    )


@pytest.mark.parametrize(
    ("mint_kw", "request_kw"),
    [
        ({"methods": ["GET"]}, {"method": "HEAD", "path": "/o/x"}),
        ({"path": "/o/"}, {"method": "GET", "path": "/o/b3:abc"}),
        ({"topic": "chat"}, {"method": "POST", "topic": "chat"}),
        ({"topic": "chat.*"}, {"method": "POST", "topic": "chat.room"}),
        ({"addr": ADDR}, {"method": "GET", "addr": ADDR[3:].upper() + ".txt"}),
        ({"max_bytes": 100}, {"method": "PUT", "nbytes": 100}),
        ({"max_bytes": 100}, {"method": "PUT"}),
    ],
)
def test_caveats_that_cover_the_request_pass(
    authority: Authority,
    verifier: Verifier,
    mint_kw: dict[str, object],
    request_kw: dict[str, object],
) -> None:
    token = _mint(authority, **mint_kw)
    verifier.check(token, audience=NODE, now=NOW, **request_kw)


def test_attenuation_works_offline_and_cannot_widen(
    authority: Authority, verifier: Verifier
) -> None:
    token = _mint(authority, methods=["GET"], path="/o/")
    # No key, no data dir: just the token.
    wider = Token.parse(token).attenuate(
        caveat("methods", "GET,PUT,DELETE"), caveat("path", "/"), caveat("exp", str(2**40))
    )
    grant = verifier.check(wider.serialize(), method="GET", path="/o/x", audience=NODE, now=NOW)
    assert grant.expires == int(NOW) + TTL  # the earlier exp still rules
    for method in ("PUT", "DELETE"):
        assert _code(
            verifier.check, wider.serialize(), method=method, path="/o/x", audience=NODE, now=NOW
        ) is (ErrorCode.FORBIDDEN)
    assert _code(
        verifier.check, wider.serialize(), method="GET", path="/v1/x", audience=NODE, now=NOW
    ) is (ErrorCode.FORBIDDEN)
    # Narrowing does narrow.
    narrow = Token.parse(token).attenuate(caveat("path", "/o/mine/"), caveat("exp", str(int(NOW))))
    assert _code(
        verifier.check, narrow.serialize(), method="GET", path="/o/mine/x", audience=NODE, now=NOW
    ) is (ErrorCode.UNAUTHORIZED)
    shorter = Token.parse(token).attenuate(caveat("path", "/o/mine/")).serialize()
    verifier.check(shorter, method="GET", path="/o/mine/x", audience=NODE, now=NOW)
    assert _code(
        verifier.check, shorter, method="GET", path="/o/yours", audience=NODE, now=NOW
    ) is (ErrorCode.FORBIDDEN)
    bound = Token.parse(token).attenuate(caveat("aud", OTHER_NODE)).serialize()
    assert _code(verifier.check, bound, method="GET", path="/o/x", audience=NODE, now=NOW) is (
        ErrorCode.UNAUTHORIZED
    )


def test_old_tokens_work_until_the_overlap_ends(
    authority: Authority, verifier: Verifier, data: Path
) -> None:
    old = _mint(authority, expires=int(NOW) + 10 * 86400)
    rotated_at = NOW + 100
    new_key, retired = _authority(data).rotate(now=rotated_at)
    assert retired is not None and retired.key_id == Token.parse(old).key_id
    new = _mint(authority, now=rotated_at + 1, expires=int(NOW) + 10 * 86400)
    assert Token.parse(new).key_id == new_key.key_id != retired.key_id
    end = rotated_at + OVERLAP
    verifier.check(old, method="GET", audience=NODE, now=end - 1)
    verifier.check(new, method="GET", audience=NODE, now=end - 1)
    with pytest.raises(RonError) as info:
        verifier.check(old, method="GET", audience=NODE, now=end)
    assert info.value.code is ErrorCode.UNAUTHORIZED
    verifier.check(new, method="GET", audience=NODE, now=end)
    # The overlap is read at check time: cutting it to 0 ends old tokens at once.
    verifier.reconfigure(0)
    with pytest.raises(RonError):
        verifier.check(old, method="GET", audience=NODE, now=rotated_at + 1)
    verifier.check(new, method="GET", audience=NODE, now=rotated_at + 1)


def test_rotation_prunes_keys_dead_for_30_days(authority: Authority) -> None:
    first, _ = authority.keyring.ensure(NOW)
    authority.rotate(now=NOW + 1)
    assert authority.keyring.get(first.key_id) is not None
    authority.rotate(now=NOW + 1 + 30 * 86400)
    assert authority.keyring.get(first.key_id) is None
    assert len(authority.keyring.keys) == 2


def test_revocation_sequence_rises(authority: Authority, verifier: Verifier) -> None:
    assert verifier.revocation_seq == 0
    a, b = (Token.parse(_mint(authority)).token_id_hex for _ in range(2))
    authority.revoke(a, now=NOW)
    assert verifier.revocation_seq == 1
    entry, new = authority.revoke(a, now=NOW + 5)
    assert (entry.seq, new) == (1, False)
    assert verifier.revocation_seq == 1
    authority.revoke(b, now=NOW + 6)
    assert verifier.revocation_seq == 2
    assert [e.token_id for e in verifier.revocations_since(0)] == [a, b]
    assert [e.token_id for e in verifier.revocations_since(1)] == [b]
    assert verifier.revocations_since(2) == []
    assert verifier.revocations_since(0)[1].to_json() == {
        "seq": 2,
        "token_id": b,
        "revoked_at": int(NOW + 6),
    }


def test_an_unusable_file_keeps_the_last_good_state(
    authority: Authority, verifier: Verifier, data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = _mint(authority)
    revoked = _mint(authority)
    authority.revoke(Token.parse(revoked).token_id_hex, now=NOW)
    verifier.check(token, method="GET", audience=NODE, now=NOW)
    paths = AuthPaths(data)
    paths.keyring.write_bytes(b"{not json")
    paths.revocations.write_bytes(b"[]")
    with caplog.at_level(logging.ERROR):
        verifier.check(token, method="GET", audience=NODE, now=NOW)
        assert _code(verifier.check, revoked, method="GET", audience=NODE, now=NOW) is (
            ErrorCode.UNAUTHORIZED
        )
    assert "not reloaded" in caplog.text
    assert token not in caplog.text


def test_a_cached_token_is_rechecked_when_its_key_changes(
    authority: Authority, verifier: Verifier, data: Path
) -> None:
    token = _mint(authority)
    for _ in range(2):  # the second check is served from the cache
        verifier.check(token, method="GET", audience=NODE, now=NOW)
    verifier.check(bytearray(token.encode()), method="GET", audience=NODE, now=NOW)
    # Same key id, different secret (a keyring restored from elsewhere): refused.
    path = AuthPaths(data).keyring
    doc = json.loads(path.read_bytes())
    doc["keys"][0]["secret"] = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    write_secret(path, json.dumps(doc).encode())
    assert _code(verifier.check, token, method="GET", audience=NODE, now=NOW) is (
        ErrorCode.UNAUTHORIZED
    )


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None
    assert bearer_token(None) is None


def test_memory_only_verifier_for_amnesia() -> None:
    from ron.auth import KeyRing, RevocationList

    ring, revs = KeyRing(None), RevocationList(None)
    key, made = ring.ensure(NOW)
    assert made
    token = mint_token(bytes(key.secret), key.key_id, [caveat("tenant", "t")])
    verifier = Verifier(ring, revs, overlap_s=0)
    verifier.check(token.serialize(), method="GET", audience=None, now=NOW)
    revs.revoke(token.token_id_hex, NOW)
    assert verifier.revocation_seq == 1
    with pytest.raises(RonError):
        verifier.check(token.serialize(), method="GET", audience=None, now=NOW)
    ring.wipe()
    assert bytes(key.secret) == bytes(32) and ring.keys == ()


# --- hostile input never raises anything but RonError ---------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Verifier, str]]:
    data = tmp_path_factory.mktemp("auth") / "data"
    authority = _authority(data)
    token = _mint(authority, methods=["GET"], path="/o/", topic="chat.*", addr=ADDR, aud=NODE)
    yield Verifier.from_data_dir(data, overlap_s=OVERLAP), token


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_arbitrary_tokens_raise_only_ron_error(
    shared: tuple[Verifier, str], token: str | bytes
) -> None:
    verifier, _ = shared
    with pytest.raises(RonError) as info:
        verifier.check(token, method="GET", path="/o/x", audience=NODE, now=NOW)
    assert info.value.code is ErrorCode.UNAUTHORIZED


@settings(max_examples=200, deadline=None)
@given(
    method=st.text(max_size=20),
    path=st.none() | st.text(max_size=60),
    addr=st.none() | st.text(max_size=80),
    topic=st.none() | st.text(max_size=40),
    nbytes=st.none() | st.integers(min_value=-(2**70), max_value=2**70),
    now=st.floats(allow_nan=True, allow_infinity=True),
    audience=st.none() | st.text(max_size=70),
)
def test_arbitrary_requests_raise_only_ron_error(
    shared: tuple[Verifier, str],
    method: str,
    path: str | None,
    addr: str | None,
    topic: str | None,
    nbytes: int | None,
    now: float,
    audience: str | None,
) -> None:
    verifier, token = shared
    try:
        verifier.check(
            token,
            method=method,
            path=path,
            addr=addr,
            topic=topic,
            audience=audience,
            nbytes=nbytes,
            now=now,
        )
    except RonError as exc:
        assert exc.code in (ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN)


def test_a_remembered_grant_is_for_its_audience_only(
    authority: Authority, verifier: Verifier
) -> None:
    token = _mint(authority, aud=OTHER_NODE)
    verifier.check(token, method="GET", audience=OTHER_NODE, now=NOW)
    verifier.check(token, method="GET", audience=OTHER_NODE, now=NOW)
    assert _code(verifier.check, token, method="GET", audience=NODE, now=NOW) is (
        ErrorCode.UNAUTHORIZED
    )
