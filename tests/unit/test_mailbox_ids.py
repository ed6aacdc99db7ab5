"""The mailbox's ULIDs: the reference encoding, ordered within a millisecond, unique."""

from __future__ import annotations

import os

from ulid import ULID

from ron.services.mailbox.ids import UlidSource, encode_ulids
from ron.services.mailbox.model import MSG_ID_RE


def test_encoding_matches_the_reference_implementation() -> None:
    reference = [ULID() for _ in range(500)]
    reference += [ULID.from_bytes(os.urandom(6) + os.urandom(10)) for _ in range(500)]
    for u in reference:
        value = int.from_bytes(u.bytes, "big")
        assert encode_ulids(value >> 80, [value & ((1 << 80) - 1)]) == [str(u)]
    top = (1 << 48) - 1
    assert encode_ulids(0, [0]) == ["0" * 26]
    assert encode_ulids(top, [(1 << 80) - 1, 0]) == ["7" + "Z" * 25, "7" + "Z" * 9 + "0" * 16]


def test_ids_are_valid_unique_and_ordered_within_a_millisecond() -> None:
    source = UlidSource()
    ids = [i for _ in range(200) for i in source.take(7)]
    assert len(set(ids)) == len(ids)
    assert all(MSG_ID_RE.fullmatch(i) for i in ids)
    # Ids of one millisecond count up; a later millisecond sorts after an earlier one.
    assert ids == sorted(ids)
