"""Fuzz target: OAP/1 decoding, COMP guard rails and the server state machine.

The property: *any* byte string, however it is split into reads, yields frames or
:class:`OapError` and never another exception; every decoded frame re-encodes; and the
decoder reaches the same outcome whether the bytes arrive whole, one by one, or in odd
chunks. :func:`one_input` is also replayed over the seed corpus by
``tests/unit/test_fuzz_corpus_replay.py`` in ``make test``, so atheris is needed only to
fuzz, never to test.

Run (atheris installed in the venv)::

    mkdir -p .fuzz/oap
    .venv/bin/python tests/fuzz/fuzz_oap_decoder.py .fuzz/oap tests/fuzz/corpus/oap \
        -max_total_time=300

or ``make fuzz FUZZ=oap``. libFuzzer writes new inputs into the *first* directory, so
keep the committed seed corpus second. Crashes land in the working directory as
``crash-*``; add the minimised input to ``tests/fuzz/corpus/oap/`` so the replay test
pins the fix.
"""

from __future__ import annotations

import contextlib

from ron.proto.envelope import ErrorCode, RonError
from ron.proto.oap import (
    Flags,
    Frame,
    FrameDecoder,
    OapError,
    OapLimits,
    ProtocolError,
    ServerConnection,
    decompress_payload,
    encode_frame,
)

Outcome = Frame | tuple[int, bool]

# Small limits make the limit paths reachable from short fuzz inputs.
_LIMITS = OapLimits(max_frame=4096, max_streams=4, max_stream_frames=8, max_stream_bytes=8192)


def _decode_chunked(data: bytes, step: int) -> list[Outcome]:
    """Feed ``data`` in ``step``-byte reads through ``receive_data``/``next_frame``."""
    decoder = FrameDecoder(_LIMITS.max_frame)
    out: list[Outcome] = []
    for start in range(0, len(data), step):
        decoder.receive_data(data[start : start + step])
        while True:
            try:
                frame = decoder.next_frame()
            except OapError as exc:
                out.append((exc.status, exc.fatal))
                if exc.fatal:
                    return out
                continue
            if frame is None:
                break
            out.append(frame)
    return out


def _decode_whole(data: bytes) -> list[Outcome]:
    """Feed ``data`` in one read through ``feed``, resuming after non-fatal errors."""
    decoder = FrameDecoder(_LIMITS.max_frame)
    out: list[Outcome] = []
    chunk = data
    while True:
        try:
            out.extend(decoder.feed(chunk))
            return out
        except OapError as exc:
            out.extend(exc.frames)
            out.append((exc.status, exc.fatal))
            if exc.fatal:
                return out
        chunk = b""


def one_input(data: bytes) -> None:
    """Check every property on one input; anything but OapError escapes as a failure."""
    whole = _decode_whole(data)
    for step in (1, 7):
        chunked = _decode_chunked(data, step)
        if chunked != whole:
            raise AssertionError(f"chunking by {step} changed the outcome")
    for item in whole:
        if not isinstance(item, Frame):
            continue
        encode_frame(item, max_frame=_LIMITS.max_frame)
        if item.flags & Flags.COMP:
            with contextlib.suppress(OapError):
                decompress_payload(item.payload, _LIMITS.max_frame)

    server = ServerConnection(_LIMITS)
    for event in server.receive_data(data):
        if isinstance(event, ProtocolError):
            server.send_error(event, event.error, "fuzz")
    if server.open_streams > _LIMITS.max_streams:
        raise AssertionError("open streams beyond the limit")
    server.send_error(Frame(Flags(0)), RonError(ErrorCode.INTERNAL, "bye"), "fuzz")


if __name__ == "__main__":
    from atheris_entry import fuzz  # beside this file: run as a script, it is on sys.path

    fuzz(one_input)
