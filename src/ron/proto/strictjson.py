"""The JSON APIs' rules, in and out: bodies parsed strictly, replies rendered compactly.

The gateway's routes (raw ASGI and Starlette alike) and the mailbox's JSON shapes
(``ron.services.mailbox.jsonwire``) use these, so a body is judged the same wherever it
is read (objects only, no unknown or duplicate keys, no NaN or Infinity, exact types)
and a reply renders the same whichever path built it.
"""

from __future__ import annotations

import json
from typing import Any

from ron.proto.envelope import ErrorCode, RonError

__all__ = ["ENCODER", "json_int", "json_number_or_none", "parse_object", "render_json"]

# Replies render exactly as Starlette's JSONResponse does (compact, UTF-8, no NaN).
ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def render_json(obj: Any) -> bytes:
    """``obj`` as the JSON APIs answer it (compact, UTF-8, no NaN)."""
    return ENCODER.encode(obj).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RonError(ErrorCode.BAD_REQUEST, f"duplicate key {key!r}")
            seen.add(key)
    return out


def _no_constants(name: str) -> Any:
    raise RonError(ErrorCode.BAD_REQUEST, f"{name} is not JSON")


# One decoder for every body: ``json.loads`` with hooks builds a new one per call.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def parse_object(
    raw: bytes, allowed: frozenset[str], *, allow_empty: bool = False
) -> dict[str, Any]:
    """A JSON object with only ``allowed`` keys; an empty body is ``{}`` if allowed."""
    if not raw.strip():
        if allow_empty:
            return {}
        raise RonError(ErrorCode.BAD_REQUEST, "a JSON object body is required")
    try:
        # As json.loads reads bytes: UTF-8, -16 or -32 by their first bytes.
        body = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except (ValueError, RecursionError):
        raise RonError(ErrorCode.BAD_REQUEST, "body is not valid JSON") from None
    if not isinstance(body, dict):
        raise RonError(ErrorCode.BAD_REQUEST, "body must be a JSON object")
    if not allowed.issuperset(body):
        unknown = set(body) - allowed
        raise RonError(ErrorCode.BAD_REQUEST, f"unknown key {sorted(unknown)[0]!r}")
    return body


def json_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RonError(ErrorCode.BAD_REQUEST, f"{name} must be an integer")
    return value


def json_number_or_none(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RonError(ErrorCode.BAD_REQUEST, f"{name} must be a number")
    return float(value)
