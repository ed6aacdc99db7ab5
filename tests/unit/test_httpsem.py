"""Gateway header semantics: Range, If-None-Match, If-Range, Accept-Encoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ron.proto.envelope import ErrorCode, RonError
from ron.proto.httpsem import (
    MAX_RANGE_HEADER_LEN,
    RangeNotSatisfiable,
    choose_encoding,
    content_range,
    etag_matches,
    if_range_allows,
    parse_range,
)

ALPHABET = b"abcdefghijklmnopqrstuvwxyz"
N = len(ALPHABET)  # 26
ETAG = '"b3:0900f0d8c6d7f6f5f665bcf9961f965477a4020b14846fbf6b07081e6dcb9bef"'
BARE = ETAG.strip('"')
BOTH = ("br", "zstd")


def served(header: str) -> bytes:
    got = parse_range(header, N)
    assert got is not None
    start, end = got
    return ALPHABET[start : end + 1]


def unsatisfiable(header: str, length: int = N) -> RangeNotSatisfiable:
    with pytest.raises(RangeNotSatisfiable) as info:
        parse_range(header, length)
    assert info.value.code is ErrorCode.RANGE_NOT_SATISFIABLE
    assert info.value.status == 416
    assert info.value.content_range == f"bytes */{length}"
    return info.value


# --- Range ------------------------------------------------------------------------------


def test_first_four_bytes() -> None:
    assert parse_range("bytes=0-3", N) == (0, 3)
    assert served("bytes=0-3") == b"abcd"


def test_suffix_range_gives_the_last_n_bytes() -> None:
    assert parse_range("bytes=-5", N) == (21, 25)
    assert served("bytes=-5") == b"vwxyz"


def test_range_starting_past_the_end_is_unsatisfiable() -> None:
    unsatisfiable("bytes=30-")


def test_open_ended_range_runs_to_the_end() -> None:
    assert parse_range("bytes=20-", N) == (20, 25)


def test_end_past_the_length_is_clamped() -> None:
    assert parse_range("bytes=24-1000", N) == (24, 25)


def test_suffix_longer_than_the_representation_gives_all_of_it() -> None:
    assert parse_range("bytes=-100", N) == (0, 25)


def test_last_byte_only() -> None:
    assert parse_range("bytes=25-25", N) == (25, 25)


def test_start_at_the_length_is_unsatisfiable() -> None:
    unsatisfiable("bytes=26-")
    unsatisfiable("bytes=26-30")


def test_zero_length_suffix_is_unsatisfiable() -> None:
    unsatisfiable("bytes=-0")


def test_any_range_of_an_empty_representation_is_unsatisfiable() -> None:
    unsatisfiable("bytes=0-", length=0)
    unsatisfiable("bytes=-1", length=0)


def test_unit_is_case_insensitive_and_whitespace_is_tolerated() -> None:
    assert parse_range("Bytes=0-3", N) == (0, 3)
    assert parse_range("  bytes = 0-3 ", N) == (0, 3)


@pytest.mark.parametrize("header", [None, "", "   ", "items=0-3", "0-3", "pages=1-2,3-4"])
def test_absent_or_foreign_unit_range_is_ignored(header: str | None) -> None:
    assert parse_range(header, N) is None


@pytest.mark.parametrize("header", ["bytes=0-1,3-4", "bytes=0-1, 3-4", "bytes=-1,-2"])
def test_multiple_ranges_are_refused(header: str) -> None:
    assert "multiple" in unsatisfiable(header).message


def test_empty_list_items_do_not_count_as_ranges() -> None:
    assert parse_range("bytes=0-3,", N) == (0, 3)
    assert parse_range("bytes=, 0-3", N) == (0, 3)


@pytest.mark.parametrize(
    "header",
    [
        "bytes=",
        "bytes=,",
        "bytes=-",
        "bytes=a-b",
        "bytes=5-2",
        "bytes=--1",
        "bytes=-1-2",
        "bytes=1--2",
        "bytes=+1-2",
        "bytes=0x1-2",
        "bytes=1_0-20",
        "bytes= 1 - 2",
        "bytes=\u0661-\u0662",  # Arabic-Indic digits, which int() would accept
        "bytes=0-3\x00",
    ],
)
def test_malformed_byte_ranges_are_refused(header: str) -> None:
    unsatisfiable(header)


def test_huge_numbers_are_refused_not_overflowed() -> None:
    unsatisfiable("bytes=0-" + "9" * 19)
    unsatisfiable("bytes=" + "9" * 19 + "-")
    unsatisfiable("bytes=-" + "9" * 400)
    assert parse_range("bytes=0-" + "9" * 18, N) == (0, 25)


def test_thousands_of_ranges_are_refused_by_length() -> None:
    header = "bytes=" + ",".join(f"{i}-{i}" for i in range(5000))
    assert len(header) > MAX_RANGE_HEADER_LEN
    assert "too long" in unsatisfiable(header).message


def test_content_range_formats() -> None:
    assert content_range(0, 3, 26) == "bytes 0-3/26"


def test_negative_length_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        parse_range("bytes=0-1", -1)


@given(header=st.text(max_size=300), length=st.integers(0, 10**20))
def test_parse_range_raises_only_ron_error_and_stays_in_bounds(header: str, length: int) -> None:
    try:
        got = parse_range(header, length)
    except RonError as exc:
        assert isinstance(exc, RangeNotSatisfiable)
        return
    if got is not None:
        start, end = got
        assert 0 <= start <= end < length


@given(
    first=st.none() | st.integers(0, 10**18 - 1),
    last=st.none() | st.integers(0, 10**18 - 1),
    length=st.integers(0, 10**6),
)
def test_well_formed_ranges_resolve_within_bounds(
    first: int | None, last: int | None, length: int
) -> None:
    header = f"bytes={'' if first is None else first}-{'' if last is None else last}"
    try:
        got = parse_range(header, length)
    except RangeNotSatisfiable:
        return
    assert got is not None
    start, end = got
    assert 0 <= start <= end < length
    if first is not None:
        assert start == first


# --- If-None-Match ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        ETAG,
        BARE,
        f"W/{ETAG}",
        "*",
        f'"other", {ETAG}',
        f'"other",{BARE} , "more"',
        f"  {ETAG}  ",
        '"x", *',
    ],
)
def test_if_none_match_matches(header: str) -> None:
    assert etag_matches(header, ETAG)
    assert etag_matches(header, BARE)  # our own tag may be given with or without quotes


@pytest.mark.parametrize(
    "header",
    [None, "", '"other"', f'"{BARE[:-1]}"', f'"{BARE}x"', ",,,", '""', "W/", "**"],
)
def test_if_none_match_does_not_match(header: str | None) -> None:
    assert not etag_matches(header, ETAG)


def test_overlong_if_none_match_matches_nothing() -> None:
    assert not etag_matches('"x",' * 5000 + ETAG, ETAG)


@given(st.text(max_size=500))
def test_etag_matches_never_raises(header: str) -> None:
    assert isinstance(etag_matches(header, ETAG), bool)


# --- If-Range ---------------------------------------------------------------------------


def test_if_range_absent_allows_the_range() -> None:
    assert if_range_allows(None, ETAG)


def test_if_range_exact_strong_match_allows_the_range() -> None:
    assert if_range_allows(ETAG, ETAG)
    assert if_range_allows(f" {ETAG} ", ETAG)
    assert if_range_allows(ETAG, BARE)


@pytest.mark.parametrize(
    "header",
    [f"W/{ETAG}", BARE, '"other"', "Wed, 21 Oct 2015 07:28:00 GMT", "", "*"],
)
def test_if_range_anything_but_our_strong_etag_means_full_response(header: str) -> None:
    assert not if_range_allows(header, ETAG)


@given(st.text(max_size=200))
def test_if_range_allows_never_raises(header: str) -> None:
    assert isinstance(if_range_allows(header, ETAG), bool)


# --- Accept-Encoding --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "available", "expected"),
    [
        (None, BOTH, "identity"),
        ("", BOTH, "identity"),
        ("gzip, deflate", BOTH, "identity"),
        ("gzip, deflate, br, zstd", BOTH, "br"),
        ("zstd, br", BOTH, "br"),
        ("br;q=0.5, zstd", BOTH, "zstd"),
        ("br", ("zstd",), "identity"),
        ("zstd", BOTH, "zstd"),
        ("ZSTD", BOTH, "zstd"),
        ("br;q=0", BOTH, "identity"),
        ("br;q=0, *", BOTH, "zstd"),
        ("*", BOTH, "br"),
        ("*", (), "identity"),
        ("*;q=0.1, br;q=0", BOTH, "zstd"),
        ("br;q=0.5, identity", BOTH, "identity"),
        ("br;q=0.5, identity;q=0.5", BOTH, "br"),
        ("br;q=0.5", BOTH, "br"),
        ("identity;q=0, br", BOTH, "br"),
        ("identity;q=0", (), "identity"),
        ("*;q=0", BOTH, "identity"),
        ("br;q=1.0, zstd;q=1", BOTH, "br"),
        ("br ; q=0.9 , zstd ; q=0.95", BOTH, "zstd"),
        ("br;Q=0.2, zstd;q=0.1", BOTH, "br"),
        ("br;q=2, zstd", BOTH, "zstd"),  # invalid q: the br item is ignored
        ("br;q=abc, zstd;q=0.1", BOTH, "zstd"),
        ("br;q=0.0001, zstd;q=0.1", BOTH, "zstd"),
        ("br;level=5, zstd;q=0.5", BOTH, "br"),  # unknown parameters are ignored
        ("br;q=0.001", BOTH, "br"),
        ("br", ("BR",), "br"),
    ],
)
def test_choose_encoding(header: str | None, available: tuple[str, ...], expected: str) -> None:
    assert choose_encoding(header, available) == expected


def test_ties_prefer_br_over_zstd() -> None:
    assert choose_encoding("zstd;q=0.8, br;q=0.8", BOTH) == "br"


def test_overlong_accept_encoding_falls_back_to_identity() -> None:
    assert choose_encoding("x, " * 1000 + "br", BOTH) == "identity"


@given(header=st.text(max_size=300), available=st.lists(st.sampled_from(["br", "zstd", "gzip"])))
def test_choose_encoding_picks_only_offered_codings(header: str, available: list[str]) -> None:
    chosen = choose_encoding(header, available)
    assert chosen == "identity" or chosen in available
