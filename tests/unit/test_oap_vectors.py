"""The vectors in docs/specs/OAP-1.md are the contract: the codec must match them exactly.

The spec is parsed here, so a vector added to the document is tested without touching
this file. The reference vectors are also pinned below, copied from REFERENCE §5 and
specs/oap1-vectors.txt, so an edit of the document cannot quietly change them.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from ron.proto.envelope import ErrorCode, RonError
from ron.proto.oap import (
    Flags,
    Frame,
    FrameDecoder,
    OapError,
    ServerInfo,
    decode_frame,
    decompress_payload,
    encode_frame,
    error_frame,
    error_from_payload,
    hello_frame,
)

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "docs" / "specs" / "OAP-1.md"
CORPUS = REPO / "tests" / "fuzz" / "corpus" / "oap"

_BLOCK = re.compile(r"^```oap-vector name=(\S+)\n(.*?)^```$", re.M | re.S)
_KEY = re.compile(r"^([a-z_]+):[ ]?(.*)$")


@dataclass(frozen=True)
class Vector:
    name: str
    fields: dict[str, str]

    @property
    def data(self) -> bytes:
        return bytes.fromhex("".join(self.fields["hex"].split()))

    @property
    def canonical(self) -> bytes:
        if "reencodes" in self.fields:
            return bytes.fromhex("".join(self.fields["reencodes"].split()))
        return self.data

    @property
    def negative(self) -> bool:
        return "error" in self.fields

    def blob(self, key: str) -> bytes:
        """``cap``/``payload``: text, or hex under ``<key>_hex``."""
        if key in self.fields:
            return self.fields[key].encode()
        return bytes.fromhex(self.fields[f"{key}_hex"])

    def number(self, key: str) -> int:
        return int(self.fields[key], 0)

    def flags(self) -> int:
        text = self.fields["flags"]
        if text == "0":
            return 0
        value = 0
        for name in text.split("|"):
            value |= Flags[name]
        return value

    def __str__(self) -> str:
        return self.name


def parse_vectors(text: str) -> list[Vector]:
    """Read every ```oap-vector block: ``key: value`` lines, indented lines continue."""
    vectors: list[Vector] = []
    for match in _BLOCK.finditer(text):
        fields: dict[str, str] = {}
        key = None
        for line in match.group(2).splitlines():
            if line[:1].isspace() and key is not None:
                fields[key] += line.strip()
                continue
            kv = _KEY.match(line)
            assert kv, f"{match.group(1)}: unreadable line {line!r}"
            key = kv.group(1)
            assert key not in fields, f"{match.group(1)}: {key} twice"
            fields[key] = kv.group(2)
        vectors.append(Vector(match.group(1), fields))
    return vectors


VECTORS = parse_vectors(SPEC.read_text(encoding="utf-8"))
BY_NAME = {vector.name: vector for vector in VECTORS}
POSITIVE = [vector for vector in VECTORS if not vector.negative]
NEGATIVE = [vector for vector in VECTORS if vector.negative]

# Copied from REFERENCE §5 and specs/oap1-vectors.txt (the tests never read /work/shared).
REFERENCE_HEX = {
    "hello-request": "21000000010000000000000000000000000000000000000000000000000000000000000000",
    "storage-get-path": (
        "4e000000010900000001030000000000000000000000000000000000002a00000000000000"
        "7b226f70223a22676574222c2270617468223a222f74696c65732f31322f3635342f31353833"
        "2e77656270227d"
    ),
    "hello-response": (
        "d6000000011200000000000000000000000000000000000000000000000000000000000000"
        "7b227365727665725f76657273696f6e223a227376632d6f6d6e69676174652d6465762d312e"
        "302e30222c226d61785f6672616d65223a313034383537362c226d61785f696e666c6967687422"
        "3a3132382c22737570706f727465645f666c616773223a5b224556454e54222c2241434b5f5245"
        "51222c22434f4d50222c224150505f453245225d2c226f61705f76657273696f6e73223a5b315d"
        "2c227472616e73706f727473223a5b227463702b746c73225d7d"
    ),
    "mailbox-send-oneshot": (
        "490000000119000000010200000000000000000000000000000000000001000000000000007b"
        "226f70223a2273656e64222c22746f706963223a2263686174222c2274657874223a226869227d"
    ),
    "legacy-error-429": (
        "4d000000011200ad0101030000000000000000000000000000000000002a000000000000007b"
        "226572726f72223a226f7665725f71756f7461222c2272657472795f61667465725f6d73223a"
        "313030307d"
    ),
}

# (flags, code, app_proto_id, corr_id, payload) as stated in REFERENCE §5.
REFERENCE_FIELDS = {
    "hello-request": (Flags(0), 0, 0x0000, 0, b""),
    "storage-get-path": (
        Flags.REQ | Flags.START,
        0,
        0x0301,
        42,
        b'{"op":"get","path":"/tiles/12/654/1583.webp"}',
    ),
    "mailbox-send-oneshot": (
        Flags.REQ | Flags.START | Flags.END,
        0,
        0x0201,
        1,
        b'{"op":"send","topic":"chat","text":"hi"}',
    ),
    "legacy-error-429": (
        Flags.RESP | Flags.END,
        429,
        0x0301,
        42,
        b'{"error":"over_quota","retry_after_ms":1000}',
    ),
}


def _pack(vector: Vector) -> bytes:
    """Encode the listed fields with plain struct, independently of ron.proto.oap."""
    cap, payload = vector.blob("cap"), vector.blob("payload")
    tenant = vector.number("tenant_id")
    header = struct.pack(
        "<IBHHHQQHQ",
        33 + len(cap) + len(payload),
        1,
        vector.flags(),
        vector.number("code"),
        vector.number("app_proto_id"),
        tenant & (2**64 - 1),
        tenant >> 64,
        len(cap),
        vector.number("corr_id"),
    )
    return header + cap + payload


def test_the_spec_holds_positive_and_negative_vectors_with_unique_names() -> None:
    assert len(BY_NAME) == len(VECTORS)
    assert len(POSITIVE) >= 10
    assert len(NEGATIVE) >= 4


@pytest.mark.parametrize("name", sorted(REFERENCE_HEX))
def test_reference_vectors_appear_in_the_spec_unchanged(name: str) -> None:
    assert BY_NAME[name].data == bytes.fromhex(REFERENCE_HEX[name])


@pytest.mark.parametrize("name", sorted(REFERENCE_FIELDS))
def test_reference_vectors_decode_to_the_reference_fields(name: str) -> None:
    flags, code, app, corr_id, payload = REFERENCE_FIELDS[name]
    frame = decode_frame(bytes.fromhex(REFERENCE_HEX[name]))
    assert frame == Frame(flags, code, app, 0, corr_id, b"", payload)


@pytest.mark.parametrize("vector", POSITIVE, ids=str)
def test_vector_decodes_to_its_listed_fields(vector: Vector) -> None:
    frame = decode_frame(vector.data)
    assert frame.ver == 1
    assert int(frame.flags) == vector.flags()
    assert frame.code == vector.number("code")
    assert frame.app_proto_id == vector.number("app_proto_id")
    assert frame.tenant_id == vector.number("tenant_id")
    assert frame.corr_id == vector.number("corr_id")
    assert frame.cap == vector.blob("cap")
    assert frame.payload == vector.blob("payload")


@pytest.mark.parametrize("vector", POSITIVE, ids=str)
def test_vector_reencodes_byte_exact(vector: Vector) -> None:
    assert encode_frame(decode_frame(vector.data)) == vector.canonical


@pytest.mark.parametrize("vector", POSITIVE, ids=str)
def test_listed_fields_pack_to_the_canonical_bytes(vector: Vector) -> None:
    assert _pack(vector) == vector.canonical


@pytest.mark.parametrize("vector", POSITIVE, ids=str)
def test_vector_decodes_the_same_when_fed_byte_by_byte(vector: Vector) -> None:
    decoder = FrameDecoder()
    frames: list[Frame] = []
    data = vector.data
    for index in range(len(data)):
        frames += decoder.feed(data[index : index + 1])
        if index < len(data) - 1:
            assert frames == []
    assert frames == [decode_frame(data)]
    assert decoder.buffered == 0


def _expect(vector: Vector, exc: OapError) -> None:
    assert exc.status == int(vector.fields["error"])
    assert exc.fatal is (vector.fields["fatal"] == "yes")


@pytest.mark.parametrize("vector", NEGATIVE, ids=str)
def test_negative_vector_fails_whole_with_its_status(vector: Vector) -> None:
    with pytest.raises(OapError) as whole:
        decode_frame(vector.data)
    _expect(vector, whole.value)
    with pytest.raises(OapError) as streamed:
        FrameDecoder().feed(vector.data)
    _expect(vector, streamed.value)


@pytest.mark.parametrize("vector", NEGATIVE, ids=str)
def test_negative_vector_fails_byte_by_byte_with_its_status(vector: Vector) -> None:
    decoder = FrameDecoder()
    data = vector.data
    with pytest.raises(OapError) as info:
        for index in range(len(data)):
            decoder.feed(data[index : index + 1])
    _expect(vector, info.value)


def test_comp_vector_decompresses_to_its_listed_text() -> None:
    vector = BY_NAME["comp-mailbox-send"]
    frame = decode_frame(vector.data)
    assert frame.flags & Flags.COMP
    assert decompress_payload(frame.payload) == vector.fields["decompressed"].encode()


def test_hello_frame_reproduces_the_reference_hello_response() -> None:
    request = decode_frame(BY_NAME["hello-request"].data)
    info = ServerInfo(server_version="svc-omnigate-dev-1.0.0", max_inflight=128)
    assert hello_frame(request, info) == BY_NAME["hello-response"].data


def test_error_frame_reproduces_the_envelope_vectors() -> None:
    not_found = RonError(ErrorCode.NOT_FOUND, "no such object")
    to_404 = Frame(Flags.REQ | Flags.START | Flags.END, app_proto_id=0x0301, corr_id=42)
    assert error_frame(to_404, not_found, "req-42") == BY_NAME["error-404-envelope"].data

    quota = RonError(ErrorCode.QUOTA_EXHAUSTED, "tenant quota exhausted", retry_after=1.5)
    to_429 = Frame(Flags.REQ | Flags.START, app_proto_id=0x0201, tenant_id=7, corr_id=9)
    assert error_frame(to_429, quota, "req-9") == BY_NAME["error-429-envelope"].data


def test_error_vectors_carry_the_envelope_plus_the_alias() -> None:
    body = json.loads(decode_frame(BY_NAME["error-429-envelope"].data).payload)
    assert body == {
        "code": "quota_exhausted",
        "message": "tenant quota exhausted",
        "retryable": True,
        "corr_id": "req-9",
        "error": "quota_exhausted",
        "retry_after_ms": 1500,
    }


def test_legacy_429_payload_is_still_understood_by_clients() -> None:
    frame = decode_frame(BY_NAME["legacy-error-429"].data)
    err = error_from_payload(frame.code, frame.payload)
    assert err.code is ErrorCode.QUOTA_EXHAUSTED
    assert err.retry_after == 1.0


@pytest.mark.parametrize("vector", VECTORS, ids=str)
def test_every_vector_is_a_fuzz_seed(vector: Vector) -> None:
    assert (CORPUS / f"vector-{vector.name}.bin").read_bytes() == vector.data
