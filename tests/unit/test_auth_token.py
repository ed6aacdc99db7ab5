"""Token format, caveat grammar and attenuation, with no key storage involved."""

from __future__ import annotations

import base64
import secrets
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ron.auth import Caveat, Token, caveat, mint_token, parse_caveat_text
from ron.auth.caveats import method_allowed, path_allowed, problem, topic_allowed
from ron.auth.token import MAX_CAVEATS, MAX_TOKEN_CHARS
from ron.proto.envelope import ErrorCode, RonError

KEY = secrets.token_bytes(32)


def _token(*caveats: str) -> Token:
    return mint_token(KEY, "k1", [parse_caveat_text(c) for c in caveats])


def test_round_trip_and_repr_hides_the_signature() -> None:
    token = _token("tenant=acme", "methods=GET")
    text = token.serialize()
    assert Token.parse(text) == token
    assert Token.parse(text.encode()) == token
    assert "=" not in text and "+" not in text and "/" not in text
    assert token.signature.hex() not in repr(token)
    assert text not in repr(token)
    assert len(token.token_id) == 16


def test_token_ids_are_random() -> None:
    assert _token("tenant=a").token_id != _token("tenant=a").token_id


def test_attenuation_needs_no_key_and_keeps_the_token_id() -> None:
    token = _token("tenant=acme")
    narrowed = Token.parse(token.serialize()).attenuate(caveat("methods", "GET"))
    assert narrowed.token_id == token.token_id
    assert narrowed.signed_by(KEY)
    assert [str(c) for c in narrowed.caveats] == ["tenant=acme", "methods=GET"]


def test_dropping_or_editing_a_caveat_breaks_the_signature() -> None:
    narrowed = _token("tenant=acme", "methods=GET", "path=/o/")
    dropped = Token(narrowed.key_id, narrowed.token_id, narrowed.caveats[:2], narrowed.signature)
    edited = Token(
        narrowed.key_id,
        narrowed.token_id,
        (*narrowed.caveats[:1], Caveat("methods", "PUT"), narrowed.caveats[2]),
        narrowed.signature,
    )
    reordered = Token(
        narrowed.key_id, narrowed.token_id, narrowed.caveats[::-1], narrowed.signature
    )
    other_id = Token(narrowed.key_id, bytes(16), narrowed.caveats, narrowed.signature)
    assert narrowed.signed_by(KEY)
    for forged in (dropped, edited, reordered, other_id):
        assert not forged.signed_by(KEY)


def test_strict_parsing_limits() -> None:
    with pytest.raises(RonError) as info:
        Token.parse("A" * (MAX_TOKEN_CHARS + 4))
    assert info.value.code is ErrorCode.UNAUTHORIZED
    token = _token("tenant=a")
    with pytest.raises(RonError):
        Token.parse(" " + token.serialize())
    with pytest.raises(RonError):
        Token.parse(token.serialize() + "\n")
    # Trailing bytes between the caveats and the signature.
    raw = token.to_bytes()
    bad = raw[:-32] + b"\x00" + raw[-32:]
    with pytest.raises(RonError):
        Token.parse(base64.urlsafe_b64encode(bad).rstrip(b"=").decode())
    # Caveat count says 2 but only one is there.
    count_at = 2 + 2 + 16
    bad = raw[:count_at] + b"\x02" + raw[count_at + 1 :]
    with pytest.raises(RonError):
        Token.from_bytes(bad)


def test_at_most_32_caveats() -> None:
    token = _token("tenant=a")
    full = token.attenuate(*[caveat("methods", "GET")] * (MAX_CAVEATS - 1))
    assert len(Token.parse(full.serialize()).caveats) == MAX_CAVEATS
    with pytest.raises(RonError) as info:
        full.attenuate(caveat("methods", "GET"))
    assert info.value.code is ErrorCode.BAD_REQUEST
    raw = bytearray(full.to_bytes())
    raw[2 + 2 + 16] = MAX_CAVEATS + 1
    with pytest.raises(RonError):
        Token.from_bytes(bytes(raw))


def test_hand_built_caveats_are_validated_on_attenuation() -> None:
    with pytest.raises(RonError):
        _token("tenant=a").attenuate(Caveat("methods", "get; DROP"))


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("exp=0", True),
        ("exp=1767225600", True),
        ("exp=01", False),
        ("exp=-1", False),
        ("exp=99999999999999999999", False),
        ("tenant=acme-1.prod_x", True),
        ("tenant=", False),
        ("tenant=a b", False),
        ("methods=GET,PUT", True),
        ("methods=get", False),
        ("methods=GET,", False),
        ("path=/o/", True),
        ("path=o/", False),
        ("path=/o/../admin", False),
        ("path=/o/./x", False),
        ("path=/o?x", False),
        ("path=/a b", False),
        ("addr=b3:" + "a" * 64, True),
        ("addr=b3:" + "A" * 64, False),
        ("aud=b3:" + "0" * 63, False),
        ("topic=chat", True),
        ("topic=chat.*", True),
        ("topic=*", True),
        ("topic=a*b", False),
        ("max_bytes=1024", True),
        ("future_caveat=anything at all", True),
        ("future_caveat=bell\x07", False),
        ("Bad=1", False),
        ("noequals", False),
    ],
)
def test_caveat_grammar(text: str, ok: bool) -> None:
    if ok:
        assert str(parse_caveat_text(text)) == text
    else:
        with pytest.raises(RonError) as info:
            parse_caveat_text(text)
        assert info.value.code is ErrorCode.BAD_REQUEST


def test_caveat_size_limit() -> None:
    assert problem("tenant", "a" * 64) is None
    assert problem("x", "a" * 1022) is None
    assert problem("x", "a" * 1023) is not None


def test_predicates() -> None:
    assert method_allowed("GET,PUT", "put")
    assert method_allowed("GET", "HEAD")
    assert not method_allowed("HEAD", "GET")
    assert not method_allowed("GET", "DELETE")
    assert path_allowed("/o/", "/o/b3:abc")
    assert path_allowed("/o", "/o/x") and path_allowed("/o", "/o")
    assert not path_allowed("/o", "/objects")
    assert not path_allowed("/o/", "/o/../put")
    assert not path_allowed("/o/", "o/x")
    assert topic_allowed("chat.*", "chat.room1")
    assert not topic_allowed("chat.*", "chatty")
    assert topic_allowed("chat", "chat") and not topic_allowed("chat", "chat2")


def test_a_caveat_longer_than_its_length_field_allows_is_refused() -> None:
    raw = _token("tenant=a").to_bytes()
    start = 2 + 2 + 16 + 1
    (size,) = struct.unpack_from("<H", raw, start)
    bad = raw[:start] + struct.pack("<H", size + 100) + raw[start + 2 :]
    with pytest.raises(RonError):
        Token.from_bytes(bad)


# --- a hostile token never raises anything but RonError -------------------------------


@given(st.text(max_size=600))
def test_arbitrary_text_raises_only_ron_error(text: str) -> None:
    try:
        Token.parse(text)
    except RonError as exc:
        assert exc.code is ErrorCode.UNAUTHORIZED


@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_ron_error(data: bytes) -> None:
    for candidate in (data, base64.urlsafe_b64encode(data).rstrip(b"=")):
        try:
            Token.parse(candidate)
        except RonError as exc:
            assert exc.code is ErrorCode.UNAUTHORIZED


_BASE = _token("tenant=acme", "methods=GET,PUT", "path=/o/", "exp=1767225600").to_bytes()


@settings(max_examples=300)
@given(st.integers(0, len(_BASE) - 1), st.binary(max_size=8), st.integers(0, 8))
def test_mutated_tokens_raise_only_ron_error(at: int, insert: bytes, cut: int) -> None:
    data = _BASE[:at] + insert + _BASE[at + cut :]
    try:
        token = Token.from_bytes(data)
    except RonError as exc:
        assert exc.code is ErrorCode.UNAUTHORIZED
        return
    assert token.to_bytes() == data  # whatever parses re-serialises to the same bytes
    if data != _BASE:
        assert not token.signed_by(KEY)
