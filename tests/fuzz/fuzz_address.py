"""Fuzz target: content-address parsing (``parse_address`` and ``normalize_tld``).

Addresses arrive in URLs, OAP payloads and CLI arguments, so the parser is a trust
boundary. The property: for *any* text, :func:`parse_address` returns a well-formed
:class:`Address` or raises ``RonError(BAD_REQUEST)`` and never another exception; an
accepted spelling reads back identically from every printed form (``with_tld``,
``canonical``, ``etag``, ``digest``) and from its all-lower and all-upper case variants,
and the printed forms are fixed points; ``normalize_tld`` is likewise total and
idempotent. :func:`one_input` is also replayed over the seed corpus by
``tests/unit/test_fuzz_corpus_replay.py`` in ``make test``, so atheris is needed only to
fuzz, never to test.

Bytes become text as UTF-8 with ``surrogateescape``: every byte string maps to some
``str``, valid UTF-8 seeds stay readable, and invalid bytes become lone surrogates,
which exercise the non-ASCII refusal.

Run (atheris installed in the venv)::

    mkdir -p .fuzz/address
    .venv/bin/python tests/fuzz/fuzz_address.py .fuzz/address tests/fuzz/corpus/address \
        -max_total_time=60

or ``make fuzz FUZZ=address``. libFuzzer writes new inputs into the *first* directory,
so keep the committed seed corpus second. Crashes land in the working directory as
``crash-*``; add the minimised input to ``tests/fuzz/corpus/address/`` so the replay test
pins the fix.
"""

from __future__ import annotations

import dataclasses

from ron.proto.address import (
    MAX_ADDRESS_LEN,
    MAX_TLD_LEN,
    Address,
    is_hex_digest,
    normalize_tld,
    parse_address,
)
from ron.proto.envelope import ErrorCode, RonError


def _parse(text: str) -> Address | None:
    """The parsed address, or None for a refusal that kept the documented contract."""
    try:
        addr = parse_address(text)
    except RonError as exc:
        if exc.code is not ErrorCode.BAD_REQUEST:
            raise AssertionError(f"refusal with {exc.code}, not bad_request") from None
        return None
    if not isinstance(addr, Address):
        raise AssertionError("parse_address returned something other than an Address")
    return addr


def _check_address(text: str, addr: Address) -> None:
    """An accepted address is well formed and every printed form reads back the same."""
    if len(text) > MAX_ADDRESS_LEN or not text.isascii():
        raise AssertionError("accepted an overlong or non-ASCII address")
    if not is_hex_digest(addr.hex) or addr.digest.hex() != addr.hex:
        raise AssertionError("hex is not 64 lowercase digits")
    if addr.tld is not None and normalize_tld(addr.tld) != addr.tld:
        raise AssertionError("tld is not in normal form")
    if str(addr) != addr.canonical or addr.etag != f'"{addr.canonical}"':
        raise AssertionError("printed forms disagree")
    if _parse(addr.with_tld) != addr or _parse(addr.canonical) != Address(addr.hex):
        raise AssertionError("a printed form does not read back as the same address")
    if _parse(addr.with_tld.upper()) != addr:
        raise AssertionError("the upper-case printed form reads differently")
    if _parse(text.lower()) != addr or _parse(text.upper()) != addr:
        raise AssertionError("changing the case of an accepted spelling changed the address")
    if dataclasses.replace(addr) != addr:
        raise AssertionError("the constructor refuses its own normal form")


def _check_tld(text: str) -> None:
    """normalize_tld is total (label or bad_request) and idempotent."""
    try:
        label = normalize_tld(text)
    except RonError as exc:
        if exc.code is not ErrorCode.BAD_REQUEST:
            raise AssertionError(f"tld refusal with {exc.code}, not bad_request") from None
        return
    if not 0 < len(label) <= MAX_TLD_LEN or label != text.lower():
        raise AssertionError("an accepted tld is not the lowercased input")
    if normalize_tld(label) != label:
        raise AssertionError("normalize_tld is not idempotent")


def one_input(data: bytes) -> None:
    """Check every property on one input; anything but RonError escapes as a failure."""
    text = data.decode("utf-8", "surrogateescape")
    addr = _parse(text)
    if addr is not None:
        _check_address(text, addr)
    _check_tld(text)
    _check_tld(text.rpartition(".")[2])


def accepts(data: bytes) -> bool:
    """Whether ``data`` is an accepted spelling of an address.

    The replay test uses it to keep ``valid-*`` seeds valid and ``malformed-*`` seeds
    refused, so the seeds keep reaching the paths they were written for.
    """
    return _parse(data.decode("utf-8", "surrogateescape")) is not None


if __name__ == "__main__":
    from atheris_entry import fuzz  # beside this file: run as a script, it is on sys.path

    fuzz(one_input)
