"""The few TOML value writers Manifest.toml needs, written by hand for determinism.

The standard library reads TOML (``tomllib``) but does not write it, and a third-party
writer would decide quoting, float formatting and key order for us -- all of which must
stay byte-stable across versions because manifests are compared and hashed. TOML 1.0
basic strings forbid raw control characters (U+0000-U+001F except tab, and U+007F); all
of them are escaped here, tab included, so a manifest line never contains an invisible
byte. Non-ASCII text is written as UTF-8, which TOML allows.
"""

from __future__ import annotations

import math
import re

__all__ = ["toml_bool", "toml_float", "toml_int", "toml_key", "toml_str"]

_SHORT_ESCAPES = {
    0x08: "\\b",
    0x09: "\\t",
    0x0A: "\\n",
    0x0C: "\\f",
    0x0D: "\\r",
    0x22: '\\"',
    0x5C: "\\\\",
}
_ESCAPES: dict[int, str] = {i: f"\\u{i:04X}" for i in (*range(0x20), 0x7F)}
_ESCAPES.update(_SHORT_ESCAPES)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)


def toml_str(value: str) -> str:
    """A TOML basic string (double-quoted, escaped) holding ``value`` exactly."""
    return '"' + value.translate(_ESCAPES) + '"'


def toml_key(key: str) -> str:
    """A key as written: bare when TOML allows it, else a quoted basic string."""
    return key if _BARE_KEY.fullmatch(key) else toml_str(key)


def toml_int(value: int) -> str:
    """A decimal TOML integer (the caller keeps it within signed 64 bits)."""
    return str(int(value))


def toml_float(value: float) -> str:
    """The shortest decimal that reads back as the same float.

    Python's ``repr`` already gives the shortest round-tripping form (``0.1``, ``1.0``,
    ``1e+16``, ``5e-324``), and each of those is a valid TOML float. Non-finite values are
    refused: TOML could spell them, but no manifest field has a use for them.
    """
    if not math.isfinite(value):
        raise ValueError("TOML manifests hold finite floats only")
    text = repr(float(value))
    if not any(c in text for c in ".e"):
        text += ".0"
    return text


def toml_bool(value: bool) -> str:
    """``true`` or ``false``."""
    return "true" if value else "false"
