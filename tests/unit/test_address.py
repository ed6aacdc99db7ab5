"""Content addresses: every accepted spelling, one canonical form, RonError for the rest."""

from __future__ import annotations

import dataclasses

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ron.proto.address import (
    MAX_ADDRESS_LEN,
    Address,
    Hasher,
    address_of,
    normalize_tld,
    parse_address,
)
from ron.proto.envelope import ErrorCode, RonError

HEX = "0900f0d8c6d7f6f5f665bcf9961f965477a4020b14846fbf6b07081e6dcb9bef"  # b"rel-test\n"
CANONICAL = f"b3:{HEX}"


def assert_bad(text: object) -> RonError:
    with pytest.raises(RonError) as info:
        parse_address(text)  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert info.value.message
    return info.value


@pytest.mark.parametrize(
    "text",
    [CANONICAL, f"blake3:{HEX}", HEX, f"B3:{HEX}", f"BLAKE3:{HEX}", f"b3:{HEX.upper()}"],
)
def test_every_accepted_spelling_parses_to_the_canonical_form(text: str) -> None:
    addr = parse_address(text)
    assert addr == Address(HEX, None)
    assert str(addr) == addr.canonical == CANONICAL
    assert addr.with_tld == CANONICAL


@pytest.mark.parametrize("prefix", ["b3:", "blake3:", ""])
def test_tld_suffix_is_kept_and_printed_with_the_tld(prefix: str) -> None:
    addr = parse_address(f"{prefix}{HEX}.image")
    assert addr == Address(HEX, "image")
    assert str(addr) == CANONICAL
    assert addr.with_tld == f"{CANONICAL}.image"


def test_tld_is_lowercased() -> None:
    assert parse_address(f"b3:{HEX.upper()}.IMAGE") == Address(HEX, "image")


def test_tld_suffix_splits_on_last_dot() -> None:
    # Splitting on the last '.' means "<hex>.a.b" has tld "b" and a body "<hex>.a",
    # which is not a digest: a tld can never smuggle a second dot into a path.
    assert_bad(f"b3:{HEX}.a.b")
    assert parse_address(f"{HEX}.post").tld == "post"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "b3:",
        f"b3:{HEX[:-1]}",
        f"b3:{HEX}0",
        f"b3:{HEX[:-1]}g",
        f"sha256:{HEX}",
        f"b3:b3:{HEX}",
        f":{HEX}",
        f"b3:{HEX}.",
        f"b3:{HEX}..",
        f"b3:{HEX}..text",
        f"b3:{HEX}/text",
        f"b3:{HEX}.te/xt",
        f"b3:{HEX}.te\x00xt",
        f"b3:{HEX}\x00",
        f" b3:{HEX}",
        f"b3:{HEX}\n",
        f"b3:{HEX}.-text",
        f"b3:{HEX}.text-",
        f"b3:{HEX}.te_xt",
        f"b3:{HEX}." + "a" * 33,
        f"b3:{HEX}.\u212a",  # KELVIN SIGN lowercases to ASCII 'k'
        f"b3:{HEX[:-1]}\u0661",  # ARABIC-INDIC DIGIT ONE
        "../../etc/passwd",
        "b3:" + "0" * 100_000,
    ],
)
def test_malformed_addresses_raise_bad_request(text: str) -> None:
    assert_bad(text)


def test_sha256_prefix_is_refused_by_name() -> None:
    assert "sha256" in assert_bad(f"sha256:{HEX}").message


def test_overlong_input_is_refused_before_parsing() -> None:
    error = assert_bad("x" * (MAX_ADDRESS_LEN + 1))
    assert "longer" in error.message


def test_longest_valid_address_is_accepted() -> None:
    text = f"blake3:{HEX}." + "a" * 32
    assert len(text) == MAX_ADDRESS_LEN
    assert parse_address(text).tld == "a" * 32


@pytest.mark.parametrize("value", [None, b"b3:" + HEX.encode(), 42])
def test_non_string_input_raises_bad_request(value: object) -> None:
    assert_bad(value)


@given(st.text(max_size=200))
def test_arbitrary_text_parses_or_raises_ron_error_only(text: str) -> None:
    try:
        addr = parse_address(text)
    except RonError as exc:
        assert exc.code is ErrorCode.BAD_REQUEST
    else:
        assert parse_address(addr.with_tld) == addr


@given(
    digest=st.binary(min_size=32, max_size=32),
    tld=st.none() | st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?", fullmatch=True),
    prefix=st.sampled_from(["", "b3:", "blake3:", "B3:"]),
    upper=st.booleans(),
)
def test_printed_forms_parse_back_to_the_same_address(
    digest: bytes, tld: str | None, prefix: str, upper: bool
) -> None:
    hex_ = digest.hex().upper() if upper else digest.hex()
    text = prefix + hex_ + ("" if tld is None else f".{tld}")
    addr = parse_address(text)
    assert addr == Address(digest.hex(), tld)
    assert parse_address(addr.with_tld) == addr
    assert parse_address(str(addr)) == dataclasses.replace(addr, tld=None)


def test_address_constructor_accepts_only_the_normalised_form() -> None:
    with pytest.raises(RonError):
        Address(HEX.upper())
    with pytest.raises(RonError):
        Address(HEX, "IMAGE")
    with pytest.raises(RonError):
        Address(HEX, "")


def test_etag_is_the_quoted_canonical_form_without_tld() -> None:
    assert Address(HEX, "text").etag == f'"{CANONICAL}"'


def test_digest_is_the_raw_32_bytes() -> None:
    assert Address(HEX).digest == bytes.fromhex(HEX)


def test_address_of_hashes_with_blake3() -> None:
    assert address_of(b"rel-test\n") == Address(HEX)
    assert address_of(b"rel-test\n", "Text") == Address(HEX, "text")
    assert address_of(b"").hex == blake3.blake3(b"").hexdigest()


def test_hasher_streams_to_the_same_digest_as_one_shot() -> None:
    data = bytes(range(256)) * 1000
    hasher = Hasher()
    for i in range(0, len(data), 4096):
        hasher.update(memoryview(data)[i : i + 4096])
    assert hasher.hexdigest() == address_of(data).hex
    assert hasher.digest() == address_of(data).digest
    assert hasher.nbytes == len(data)
    assert hasher.address("bin") == Address(address_of(data).hex, "bin")


def test_hasher_initial_data_counts() -> None:
    hasher = Hasher(b"rel-")
    hasher.update(bytearray(b"test\n"))
    assert hasher.hexdigest() == HEX
    assert hasher.nbytes == 9


@pytest.mark.parametrize("label", ["image", "x", "3gp", "a-b", "A" * 32])
def test_normalize_tld_accepts_dns_style_labels(label: str) -> None:
    assert normalize_tld(label) == label.lower()


@pytest.mark.parametrize("label", ["", "-a", "a-", "a.b", "a b", "a" * 33, "é"])
def test_normalize_tld_refuses_anything_else(label: str) -> None:
    with pytest.raises(RonError):
        normalize_tld(label)
