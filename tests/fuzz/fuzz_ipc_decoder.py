"""Fuzz target: the IPC transport's length-prefixed MessagePack frame decoder.

The property: *any* byte string, however it is split into reads, yields validated
messages or :class:`FrameError` (``bad_request`` or ``payload_too_large``) and never
another exception; the reader never buffers more than one frame; it reaches the same
outcome whether the bytes arrive whole, one by one, or in odd chunks; once poisoned it
keeps raising the same error; and every decoded message re-encodes to a frame that
decodes to the same bytes again, with the zero-copy ``chunk_header``/``encode_end``
writers agreeing byte for byte with the generic encoder. :func:`one_input` is also
replayed over the seed corpus by ``tests/unit/test_fuzz_corpus_replay.py`` in
``make test``, so atheris is needed only to fuzz, never to test.

Run (atheris installed in the venv)::

    mkdir -p .fuzz/ipc
    .venv/bin/python tests/fuzz/fuzz_ipc_decoder.py .fuzz/ipc tests/fuzz/corpus/ipc \
        -max_total_time=60

or ``make fuzz FUZZ=ipc``. libFuzzer writes new inputs into the *first* directory, so
keep the committed seed corpus second. Crashes land in the working directory as
``crash-*``; add the minimised input to ``tests/fuzz/corpus/ipc/`` so the replay test
pins the fix.
"""

from __future__ import annotations

from typing import Any

from ron.ipc.framing import (
    HEADER_SIZE,
    FrameError,
    FrameReader,
    chunk_header,
    encode,
    encode_end,
    validate,
)
from ron.proto.envelope import ErrorCode

# A small limit makes the oversize path reachable from short fuzz inputs; the re-encode
# limit is generous because a re-encoded message may legitimately grow (a float32 in
# the input comes back as a float64).
_MAX_FRAME = 1024
_REENCODE_MAX = 1 << 20
_FRAME_CODES = (ErrorCode.BAD_REQUEST, ErrorCode.PAYLOAD_TOO_LARGE)

# Messages are compared as their re-encoded frames: a NaN inside a message is never
# equal to itself, but its encoding is.
Decoded = tuple[list[dict[str, Any]], ErrorCode | None]
Outcome = tuple[list[bytes], ErrorCode | None]


def _decode(data: bytes, step: int) -> Decoded:
    """Feed ``data`` in ``step``-byte reads; stop at the first frame error."""
    reader = FrameReader(_MAX_FRAME)
    messages: list[dict[str, Any]] = []
    for start in range(0, len(data), step):
        try:
            messages.extend(reader.feed(data[start : start + step]))
        except FrameError as exc:
            return messages, _poisoned(reader, exc)
        if reader.buffered > _MAX_FRAME + HEADER_SIZE:
            raise AssertionError(f"reader buffers {reader.buffered} bytes, beyond one frame")
        if reader.error is not None:
            return messages, _poisoned(reader, reader.error)
    return messages, None


def _outcome(decoded: Decoded) -> Outcome:
    messages, code = decoded
    return [encode(msg, _REENCODE_MAX) for msg in messages], code


def _poisoned(reader: FrameReader, error: FrameError) -> ErrorCode:
    """Check the error's code and that the reader now refuses everything with it."""
    if error.code not in _FRAME_CODES:
        raise AssertionError(f"unexpected frame error code {error.code}")
    try:
        reader.feed(b"\x00\x00\x00\x01\x80")
    except FrameError as again:
        if again is not error:
            raise AssertionError("a poisoned reader raised a different error") from None
    else:
        raise AssertionError("a poisoned reader accepted more bytes")
    return error.code


def _check_message(msg: dict[str, Any]) -> None:
    """Every decoded message is valid and re-encodes to a stable frame."""
    if validate(msg) is not msg:
        raise AssertionError("validate did not return its argument")
    frame = encode(msg, _REENCODE_MAX)
    again = FrameReader(_REENCODE_MAX).feed(frame)
    if len(again) != 1 or encode(again[0], _REENCODE_MAX) != frame:
        raise AssertionError("re-encoding a decoded message is not stable")
    cid: int = msg["id"]
    if "c" in msg:
        payload: bytes = msg["c"]
        if chunk_header(cid, len(payload)) + payload != encode({"id": cid, "c": payload}):
            raise AssertionError("chunk_header disagrees with encode")
    if "e" in msg and encode_end(cid) != encode({"id": cid, "e": True}):
        raise AssertionError("encode_end disagrees with encode")


def one_input(data: bytes) -> None:
    """Check every property on one input; anything but FrameError escapes as a failure."""
    decoded = _decode(data, max(len(data), 1))
    for msg in decoded[0]:
        _check_message(msg)
    whole = _outcome(decoded)
    for step in (1, 7):
        if _outcome(_decode(data, step)) != whole:
            raise AssertionError(f"chunking by {step} changed the outcome")


def accepts(data: bytes) -> bool:
    """Whether ``data`` decodes to at least one message and no frame error.

    The replay test uses it to keep ``valid-*`` seeds valid and ``malformed-*`` seeds
    refused, so the seeds keep reaching the paths they were written for.
    """
    messages, code = _decode(data, max(len(data), 1))
    return bool(messages) and code is None


if __name__ == "__main__":
    from atheris_entry import fuzz  # beside this file: run as a script, it is on sys.path

    fuzz(one_input)
