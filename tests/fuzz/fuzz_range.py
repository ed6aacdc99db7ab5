"""Fuzz target: the gateway's HTTP ``Range`` header parser (``parse_range``).

The header comes straight from the network. The property: for *any* header value and
representation length, :func:`parse_range` returns ``None`` (serve 200), an inclusive
``(start, end)`` inside the representation (serve 206), or raises
:class:`RangeNotSatisfiable` carrying that length (serve 416) -- never another
exception; whether the header is ignored does not depend on the length; and a resolved
range is a fixed point: written back as ``bytes=<start>-<end>`` it resolves to itself,
and ``content_range`` prints exactly those numbers. :func:`one_input` is also replayed
over the seed corpus by ``tests/unit/test_fuzz_corpus_replay.py`` in ``make test``, so
atheris is needed only to fuzz, never to test.

The input is the raw header value, decoded as latin-1 exactly as the gateway decodes
ASGI header bytes, and is resolved against a fixed set of lengths (empty, one byte,
small, and the 18-digit boundary) so seeds stay plain header text.

Run (atheris installed in the venv)::

    mkdir -p .fuzz/range
    .venv/bin/python tests/fuzz/fuzz_range.py .fuzz/range tests/fuzz/corpus/range \
        -max_total_time=60

or ``make fuzz FUZZ=range``. libFuzzer writes new inputs into the *first* directory, so
keep the committed seed corpus second. Crashes land in the working directory as
``crash-*``; add the minimised input to ``tests/fuzz/corpus/range/`` so the replay test
pins the fix.
"""

from __future__ import annotations

from ron.proto.envelope import ErrorCode, RonError
from ron.proto.httpsem import RangeNotSatisfiable, content_range, parse_range

_LENGTHS = (0, 1, 2, 26, 4096, 10**18 - 1, 10**18, 10**20)
# Positions past 18 digits are refused by design, so a range resolved against a larger
# representation may not be writable back as a header.
_WRITABLE = 10**18

Outcome = tuple[int, int] | None


def _resolve(header: str, length: int) -> Outcome | RangeNotSatisfiable:
    """The parser's answer, with a refusal checked against the documented contract."""
    try:
        span = parse_range(header, length)
    except RonError as exc:
        if not isinstance(exc, RangeNotSatisfiable):
            raise AssertionError(f"refusal is {type(exc).__name__}, not 416") from None
        if exc.code is not ErrorCode.RANGE_NOT_SATISFIABLE or exc.length != length:
            raise AssertionError("a 416 must carry the representation length") from None
        if exc.content_range != f"bytes */{length}":
            raise AssertionError("wrong Content-Range for a 416") from None
        return exc
    if span is None:
        return None
    start, end = span
    if not (type(start) is int and type(end) is int and 0 <= start <= end < length):
        raise AssertionError(f"range {span} outside a representation of {length} bytes")
    return start, end


def _check_fixed_point(start: int, end: int, length: int) -> None:
    """A resolved range written back as a header resolves to itself."""
    if length <= _WRITABLE and parse_range(f"bytes={start}-{end}", length) != (start, end):
        raise AssertionError("a resolved range does not resolve to itself")
    if content_range(start, end, length) != f"bytes {start}-{end}/{length}":
        raise AssertionError("content_range misprints the range")


def one_input(data: bytes) -> None:
    """Check every property on one input; anything but RangeNotSatisfiable is a failure."""
    header = data.decode("latin-1")
    ignored: set[bool] = set()
    for length in _LENGTHS:
        outcome = _resolve(header, length)
        ignored.add(outcome is None)
        if isinstance(outcome, tuple):
            _check_fixed_point(*outcome, length)
    if len(ignored) != 1:
        raise AssertionError("whether the header is ignored depends on the length")


def accepts(data: bytes) -> bool:
    """Whether some representation length lets ``data`` be served (200 or 206, not 416).

    The replay test uses it to keep ``valid-*`` seeds valid and ``malformed-*`` seeds
    refused, so the seeds keep reaching the paths they were written for.
    """
    header = data.decode("latin-1")
    return any(not isinstance(_resolve(header, n), RangeNotSatisfiable) for n in _LENGTHS)


if __name__ == "__main__":
    from atheris_entry import fuzz  # beside this file: run as a script, it is on sys.path

    fuzz(one_input)
