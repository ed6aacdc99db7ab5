"""Fuzz target: Manifest.toml parsing (``Manifest.parse``) and its renderer.

A manifest may have been copied in from elsewhere or edited, and the gateway reads one
on every miss, so ``parse`` treats the file as untrusted. The property: for *any* bytes,
:meth:`Manifest.parse` returns a :class:`Manifest` or raises ``RonError(BAD_REQUEST)``
and never another exception; bytes and the same text decoded give the same answer; and
an accepted manifest round-trips: ``parse(render(m)) == m``, its rendering is a fixed
point (byte for byte, as text or as UTF-8), the constructor accepts its own fields, and
every field the schema stores verbatim comes back from the rendering with the same value
*and* TOML type. :func:`one_input` is also replayed over the seed corpus by
``tests/unit/test_fuzz_corpus_replay.py`` in ``make test``, so atheris is needed only to
fuzz, never to test.

Run (atheris installed in the venv)::

    mkdir -p .fuzz/manifest
    .venv/bin/python tests/fuzz/fuzz_manifest.py .fuzz/manifest tests/fuzz/corpus/manifest \
        -max_total_time=60

or ``make fuzz FUZZ=manifest``. libFuzzer writes new inputs into the *first* directory,
so keep the committed seed corpus second. Crashes land in the working directory as
``crash-*``; add the minimised input to ``tests/fuzz/corpus/manifest/`` so the replay
test pins the fix.
"""

from __future__ import annotations

import dataclasses
import tomllib
from typing import Any

from ron.proto.envelope import ErrorCode, RonError
from ron.proto.manifest import Manifest

# Fields copied from the file unchanged; the others are normalised on purpose (the
# address spelling, a TOML datetime becoming a string, an integer price becoming a float).
_TOP_VERBATIM = (
    "schema_version",
    "tld",
    "hash_algo",
    "hash_hex",
    "bytes",
    "mime",
    "stored_filename",
    "original_filename",
    "license",
)
_PAYMENT_VERBATIM = ("required", "currency", "price_model", "wallet")


def _parse(data: bytes | str) -> Manifest | None:
    """The parsed manifest, or None for a refusal that kept the documented contract."""
    try:
        manifest = Manifest.parse(data)
    except RonError as exc:
        if exc.code is not ErrorCode.BAD_REQUEST:
            raise AssertionError(f"refusal with {exc.code}, not bad_request") from None
        return None
    if not isinstance(manifest, Manifest):
        raise AssertionError("parse returned something other than a Manifest")
    return manifest


Verbatim = dict[tuple[str | int, ...], tuple[type, Any]]


def _verbatim(doc: dict[str, Any]) -> Verbatim:
    """The verbatim fields of a TOML document by path, each with its type (2.0 is not 2)."""
    out: Verbatim = {(k,): (type(doc[k]), doc[k]) for k in _TOP_VERBATIM if k in doc}
    for i, enc in enumerate(doc.get("encodings", [])):
        out.update({("encodings", i, k): (type(v), v) for k, v in enc.items()})
    payment = doc.get("payment") or {}
    for k in _PAYMENT_VERBATIM:
        if k in payment:
            out["payment", k] = type(payment[k]), payment[k]
    source = (doc.get("relations") or {}).get("source")
    if source is not None:
        out["relations", "source"] = type(source), source
    for namespace, table in doc.get("ext", {}).items():
        out.update({("ext", namespace, k): (type(v), v) for k, v in table.items()})
    return out


def _check_manifest(data: bytes, manifest: Manifest) -> None:
    """An accepted manifest renders to a fixed point that reads back identically."""
    text = manifest.render()
    if not text.endswith("\n") or "\r" in text:
        raise AssertionError("rendering is not newline-terminated LF text")
    again = _parse(text)
    if again is None or again != manifest or _parse(text.encode("utf-8")) != manifest:
        raise AssertionError("the rendering does not read back as the same manifest")
    if again.render() != text:
        raise AssertionError("rendering is not a fixed point")
    if dataclasses.replace(manifest) != manifest:
        raise AssertionError("the constructor refuses its own fields")
    if manifest.address.hex != manifest.hash_hex or manifest.address.tld != manifest.tld:
        raise AssertionError("the address disagrees with hash_hex and tld")
    original = _verbatim(tomllib.loads(data.decode("utf-8")))
    rendered = _verbatim(tomllib.loads(text))
    if original != rendered:
        changed = sorted(
            k for k in original.keys() | rendered.keys() if original.get(k) != rendered.get(k)
        )
        raise AssertionError(f"rendering changed verbatim fields: {changed}")


def one_input(data: bytes) -> None:
    """Check every property on one input; anything but RonError escapes as a failure."""
    manifest = _parse(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        if manifest is not None:
            raise AssertionError("accepted bytes that are not UTF-8") from None
        return
    if _parse(text) != manifest:
        raise AssertionError("bytes and the same text decoded parse differently")
    if manifest is not None:
        _check_manifest(data, manifest)


def accepts(data: bytes) -> bool:
    """Whether ``data`` is an accepted Manifest.toml.

    The replay test uses it to keep ``valid-*`` seeds valid and ``malformed-*`` seeds
    refused, so the seeds keep reaching the paths they were written for.
    """
    return _parse(data) is not None


if __name__ == "__main__":
    from atheris_entry import fuzz  # beside this file: run as a script, it is on sys.path

    fuzz(one_input)
