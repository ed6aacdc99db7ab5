"""First-party caveats: the grammar of ``key=value`` and what each one allows.

A caveat only ever *narrows* a token. Caveats are conjunctive: a request is allowed only
when every caveat allows it, so appending ``methods=GET,PUT,DELETE`` to a token that
already says ``methods=GET`` still allows only GET. That, plus the HMAC chain, is why
attenuation can never widen a token (docs/specs/CAPABILITIES.md §3).

The grammar is strict and the same on every path in: a token presented by a client and
a caveat typed on the command line are checked by one function, :func:`problem`, so
the CLI can never mint something the verifier would read differently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ron.proto.envelope import ErrorCode, RonError

__all__ = [
    "KNOWN_KEYS",
    "MAX_CAVEAT_BYTES",
    "Caveat",
    "caveat",
    "decode_caveat",
    "method_allowed",
    "parse_caveat_text",
    "path_allowed",
    "problem",
    "topic_allowed",
]

MAX_CAVEAT_BYTES = 1024
MAX_INT = (1 << 63) - 1

KNOWN_KEYS = ("exp", "tenant", "methods", "path", "addr", "topic", "aud", "max_bytes")

_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}", re.ASCII)
_INT = re.compile(r"0|[1-9][0-9]{0,18}", re.ASCII)
_TENANT = re.compile(r"[A-Za-z0-9._-]{1,64}", re.ASCII)
_METHODS = re.compile(r"[A-Z]{1,16}(?:,[A-Z]{1,16}){0,15}", re.ASCII)
_PATH = re.compile(r"/[\x21-\x7e]{0,1000}", re.ASCII)
_DIGEST_ID = re.compile(r"b3:[0-9a-f]{64}", re.ASCII)
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,128}|[A-Za-z0-9._-]{0,127}\*", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Caveat:
    """One ``key=value`` condition; built only through :func:`caveat`/:func:`decode_caveat`."""

    key: str
    value: str

    def encode(self) -> bytes:
        return f"{self.key}={self.value}".encode()

    def __str__(self) -> str:
        return f"{self.key}={self.value}"

    @property
    def int_value(self) -> int:
        """The value of ``exp``/``max_bytes`` (already validated as an integer)."""
        return int(self.value)


def problem(key: str, value: str) -> str | None:
    """Why ``key=value`` is not a well-formed caveat, or None when it is.

    Unknown keys are well formed when the key and value follow the generic grammar (so
    ``ron cap inspect`` can show a newer node's token), but no verifier here satisfies
    them.
    """
    if _KEY.fullmatch(key) is None:
        return "caveat key must be 1-32 of [a-z0-9_], starting with a letter"
    try:
        size = len(key) + 1 + len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "caveat value is not valid Unicode text"
    if size > MAX_CAVEAT_BYTES:
        return f"caveat is longer than {MAX_CAVEAT_BYTES} bytes"
    if key in ("exp", "max_bytes"):
        if _INT.fullmatch(value) is None or int(value) > MAX_INT:
            return f"{key} must be a non-negative integer without leading zeros"
    elif key == "tenant":
        if _TENANT.fullmatch(value) is None:
            return "tenant must be 1-64 of [A-Za-z0-9._-]"
    elif key == "methods":
        if _METHODS.fullmatch(value) is None:
            return "methods must be 1-16 comma-separated upper-case method names"
    elif key == "path":
        if _PATH.fullmatch(value) is None:
            return "path must start with '/' and be printable ASCII without spaces"
        if "?" in value or "#" in value or _has_dot_segment(value):
            return "path must not contain '?', '#', '.' or '..' segments"
    elif key in ("addr", "aud"):
        if _DIGEST_ID.fullmatch(value) is None:
            return f"{key} must be b3:<64 lowercase hex>"
    elif key == "topic":
        if _TOPIC.fullmatch(value) is None:
            return "topic must be a topic name (1-128 of [A-Za-z0-9._-]) or a prefix ending in *"
    elif _CONTROL.search(value) is not None:
        return "caveat values must not contain control characters"
    return None


def caveat(key: str, value: str, *, code: ErrorCode = ErrorCode.BAD_REQUEST) -> Caveat:
    """A validated caveat; raises ``RonError(code)`` naming the problem."""
    reason = problem(key, value)
    if reason is not None:
        raise RonError(code, reason)
    return Caveat(key, value)


def decode_caveat(raw: bytes, *, code: ErrorCode = ErrorCode.UNAUTHORIZED) -> Caveat:
    """Parse the wire form ``key=value`` (UTF-8); a malformed one raises ``RonError(code)``.

    The default code is 401 because a caveat that cannot be read makes the whole token
    unusable; the CLI passes BAD_REQUEST for text a user typed.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RonError(code, "caveat is not UTF-8") from None
    key, sep, value = text.partition("=")
    if not sep:
        raise RonError(code, "caveat must be key=value")
    return caveat(key, value, code=code)


def parse_caveat_text(text: str) -> Caveat:
    """A caveat typed by a user (``methods=GET``); BAD_REQUEST when malformed."""
    return decode_caveat(text.encode("utf-8", "surrogatepass"), code=ErrorCode.BAD_REQUEST)


def _has_dot_segment(path: str) -> bool:
    return any(seg in (".", "..") for seg in path.split("/"))


# --- what a caveat allows -----------------------------------------------------------


def method_allowed(allowed: str, method: str) -> bool:
    """``methods=GET,PUT`` allows exactly those; GET also allows HEAD (same read)."""
    names = allowed.split(",")
    m = method.upper()
    return m in names or (m == "HEAD" and "GET" in names)


def path_allowed(prefix: str, path: str) -> bool:
    """Segment-wise prefix: ``/o`` allows ``/o`` and ``/o/x`` but not ``/objects``.

    A prefix ending in ``/`` allows everything below it. A requested path with ``.`` or
    ``..`` segments is never allowed: whether it stays under the prefix depends on who
    normalises it, and the answer must not.
    """
    if not path.startswith("/") or _has_dot_segment(path):
        return False
    if path == prefix:
        return True
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path.startswith(prefix + "/")


def topic_allowed(pattern: str, topic: str) -> bool:
    """``topic=chat`` allows exactly ``chat``; ``topic=chat.*`` allows names starting with
    ``chat.`` (and ``*`` allows any topic)."""
    if pattern.endswith("*"):
        return topic.startswith(pattern[:-1])
    return topic == pattern
