"""The vectors in docs/specs/CAPABILITIES.md are the contract: code must match them exactly.

The document is parsed here, so a vector added to it is tested without touching this
file; the minted token's signature is also pinned below so an edit of the document
cannot quietly change the format.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ron.auth import NodeIdentity, Token, caveat, mint_token, node_id_of
from ron.auth.audit import record_line
from ron.auth.caveats import parse_caveat_text
from ron.proto.envelope import ErrorCode, RonError

SPEC = Path(__file__).resolve().parents[2] / "docs" / "specs" / "CAPABILITIES.md"
_BLOCK = re.compile(r"^```([a-z-]+) name=(\S+)\n(.*?)^```$", re.M | re.S)
PINNED_SIGNATURE = "e2e750d0420a2ab79ceb243d1a2891f246e76b12e12b258a0d2d5492ad2e1838"


def _blocks(kind: str) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for block_kind, name, body in _BLOCK.findall(SPEC.read_text("utf-8")):
        if block_kind != kind:
            continue
        fields: dict[str, list[str]] = {}
        for line in body.splitlines():
            key, _, value = line.partition(": ")
            fields.setdefault(key, []).append(value)
        out[name] = fields
    assert out, f"no {kind} blocks in {SPEC}"
    return out


CAP = _blocks("cap-vector")


def _one(fields: dict[str, list[str]], key: str) -> str:
    (value,) = fields[key]
    return value


def _minted(name: str) -> Token:
    f = CAP[name]
    if "base" in f:
        base = _minted(_one(f, "base"))
        return base.attenuate(*(parse_caveat_text(c) for c in f["caveat"]))
    return mint_token(
        bytes.fromhex(_one(f, "root_key")),
        _one(f, "key_id"),
        [parse_caveat_text(c) for c in f["caveat"]],
        token_id=bytes.fromhex(_one(f, "token_id")),
    )


def _root_key(name: str) -> bytes:
    f = CAP[name]
    return _root_key(_one(f, "base")) if "base" in f else bytes.fromhex(_one(f, "root_key"))


@pytest.mark.parametrize("name", sorted(CAP))
def test_token_vector_serializes_exactly(name: str) -> None:
    token = _minted(name)
    f = CAP[name]
    assert token.serialize() == _one(f, "token")
    if "hex" in f:
        assert token.to_bytes().hex() == _one(f, "hex")
    if "signature" in f:
        assert token.signature.hex() == _one(f, "signature")
    parsed = Token.parse(_one(f, "token"))
    assert parsed == token
    assert parsed.signed_by(_root_key(name))
    assert not parsed.signed_by(bytes(32))


def test_minted_vector_is_pinned() -> None:
    assert _minted("minted").signature.hex() == PINNED_SIGNATURE
    assert [str(c) for c in _minted("attenuated").caveats][-2:] == ["path=/o/", "methods=GET"]


@pytest.mark.parametrize("name", sorted(_blocks("cap-reject")))
def test_rejected_spellings_are_401(name: str) -> None:
    text = _one(_blocks("cap-reject")[name], "token")
    with pytest.raises(RonError) as info:
        Token.parse(text)
    assert info.value.code is ErrorCode.UNAUTHORIZED


@pytest.mark.parametrize("name", sorted(_blocks("node-id-vector")))
def test_node_id_vector(name: str) -> None:
    f = _blocks("node-id-vector")[name]
    identity = NodeIdentity.from_seed(bytes.fromhex(_one(f, "seed")))
    assert identity.public_key.hex() == _one(f, "public_key")
    assert identity.node_id == _one(f, "node_id")
    assert node_id_of(identity.public_key) == _one(f, "node_id")
    caveat("aud", identity.node_id)  # a node id is a valid audience


@pytest.mark.parametrize("name", sorted(_blocks("audit-vector")))
def test_audit_record_vector(name: str) -> None:
    f = _blocks("audit-vector")[name]
    line = record_line(
        int(_one(f, "seq")),
        _one(f, "ts"),
        _one(f, "event"),
        _one(f, "actor"),
        json.loads(_one(f, "data")),
        "0" * 64,
    )
    assert line.decode() == _one(f, "line")
