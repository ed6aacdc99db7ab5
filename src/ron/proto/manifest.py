"""Manifest.toml schema v2: the description stored next to every bundle's payload.

A manifest is read by the gateway on every miss (MIME type, encodings to verify,
payment terms) and written once by the bundle builder. Two properties matter:

* **Deterministic output.** :meth:`Manifest.render` writes keys in the order fixed by
  REFERENCE §2 with hand-written escaping (``ron.proto._toml``), so the same manifest is
  always the same bytes -- diffable, hashable, and stable across library upgrades.
* **Strict input.** :meth:`Manifest.parse` treats the file as untrusted (a bundle may
  have been copied in from elsewhere or edited): unknown keys, wrong types, a digest that
  is not 64 lowercase hex, file names that could leave the bundle directory, and header
  fields with control characters are all refused with ``RonError(BAD_REQUEST)``. Fields
  that end up in HTTP headers (``mime``, payment ``currency``/``wallet``) are held to
  printable ASCII so a manifest can never inject a header.

Every dataclass validates itself on construction, so an invalid manifest cannot be
built in code either; ``parse`` only has to convert TOML types.
"""

from __future__ import annotations

import builtins
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final

from ron.proto._toml import toml_bool, toml_float, toml_int, toml_key, toml_str
from ron.proto.address import Address, is_hex_digest, normalize_tld, parse_address
from ron.proto.envelope import ErrorCode, RonError

__all__ = [
    "CODINGS",
    "MANIFEST_NAME",
    "MAX_MANIFEST_LEN",
    "PRICE_MODELS",
    "SCHEMA_VERSION",
    "Encoding",
    "Manifest",
    "Payment",
    "Relations",
    "Split",
    "format_utc",
]

SCHEMA_VERSION: Final = 2
HASH_ALGO: Final = "b3"
CODINGS: Final = ("zstd", "br")
PRICE_MODELS: Final = ("per_mib", "flat", "per_request")
MANIFEST_NAME: Final = "Manifest.toml"
MAX_MANIFEST_LEN: Final = 256 * 1024
"""Longest Manifest.toml accepted, in characters: real ones are under 2 KiB."""

_MAX_INT = (1 << 63) - 1  # TOML integers are signed 64-bit
_ZSTD_LEVELS = range(-(1 << 17), 23)
_BROTLI_QUALITIES = range(12)
_SAFE_FILENAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}", re.ASCII)
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MIME = re.compile(
    rf'{_TOKEN}/{_TOKEN}(?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|"[^"\\\x00-\x1f\x7f]*"))*',
    re.ASCII,
)
_UTC = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z", re.ASCII
)
_EXT_NAMESPACE = re.compile(r"[A-Za-z0-9_-]{1,64}", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SPLIT_TOTAL_SLACK = 1e-9  # 33.3 + 33.3 + 33.4 must pass despite binary rounding


def _bad(message: str) -> RonError:
    return RonError(ErrorCode.BAD_REQUEST, f"invalid manifest: {message}")


# --- field checks (shared by constructors and parse) ----------------------------------


def _check_text(value: object, what: str, *, max_len: int, allow_empty: bool = False) -> str:
    """A string without control characters and representable as UTF-8."""
    if not isinstance(value, str):
        raise _bad(f"{what} must be a string")
    if len(value) > max_len:
        raise _bad(f"{what} is longer than {max_len} characters")
    if not value and not allow_empty:
        raise _bad(f"{what} is empty")
    if _CONTROL.search(value):
        raise _bad(f"{what} contains a control character")
    _check_utf8(value, what)
    return value


def _check_utf8(value: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad(f"{what} is not valid Unicode (lone surrogate)") from None


def _check_header_value(value: object, what: str, *, max_len: int) -> str:
    """Printable ASCII without leading/trailing space: safe verbatim in an HTTP header."""
    text = _check_text(value, what, max_len=max_len)
    if not text.isascii() or text != text.strip():
        raise _bad(f"{what} must be printable ASCII without surrounding spaces")
    return text


def _check_int(value: object, what: str, *, lo: int = 0, hi: int = _MAX_INT) -> int:
    # bool is an int subclass; `bytes = true` is a type error, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(f"{what} must be an integer")
    if not lo <= value <= hi:
        raise _bad(f"{what} must be between {lo} and {hi}")
    return value


def _check_number(value: object, what: str, *, lo: float, hi: float) -> float:
    """A finite float (integers accepted and converted: ``price = 1`` means 1.0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"{what} must be a number")
    try:
        number = float(value)
    except OverflowError:  # tomllib reads integers of any size
        number = math.inf
    if not math.isfinite(number) or not lo <= number <= hi:
        bounds = f">= {lo:g}" if math.isinf(hi) else f"between {lo:g} and {hi:g}"
        raise _bad(f"{what} must be a finite number {bounds}")
    return number


def _check_bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(f"{what} must be true or false")
    return value


def _check_hex(value: object, what: str) -> str:
    if not isinstance(value, str) or not is_hex_digest(value):
        raise _bad(f"{what} must be 64 lowercase hex digits")
    return value


def _check_filename(value: object, what: str) -> str:
    """A plain file name inside the bundle directory: no separators, no leading dot.

    The gateway serves bundle files by these names, so a tampered manifest must not be
    able to point outside the bundle (``../``), at hidden files, or at odd encodings.
    """
    if not isinstance(value, str) or _SAFE_FILENAME.fullmatch(value) is None:
        raise _bad(f"{what} must be 1-128 of [A-Za-z0-9._-], not starting with '.'")
    return value


def _check_tld(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _bad(f"{what} must be a string")
    try:
        label = normalize_tld(value)
    except RonError as exc:
        raise _bad(f"{what}: {exc.message}") from None
    if label != value:
        raise _bad(f"{what} must be lowercase")
    return label


def _check_created_utc(value: object) -> str:
    if isinstance(value, datetime):
        # A hand-written manifest may use a TOML datetime literal; store our string form.
        if value.utcoffset() != timedelta(0):
            raise _bad("created_utc must be in UTC (suffix Z)")
        return format_utc(value)
    if not isinstance(value, str) or _UTC.fullmatch(value) is None:
        raise _bad("created_utc must be an RFC 3339 UTC timestamp like 2025-01-31T12:00:00Z")
    try:
        datetime.fromisoformat(value[:19] + "+00:00")
    except ValueError:
        raise _bad(f"created_utc is not a real date and time: {value!r}") from None
    return value


def format_utc(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix; microseconds only when there are some.

    ``moment`` must be timezone-aware: a naive datetime would silently mean "local time"
    on one machine and UTC on another.
    """
    if moment.tzinfo is None:
        raise ValueError("format_utc needs a timezone-aware datetime")
    u = moment.astimezone(UTC)
    text = f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
    if u.microsecond:
        text += f".{u.microsecond:06d}"
    return text + "Z"


# --- the schema -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Encoding:
    """A precompressed copy of the payload stored in the bundle (``[[encodings]]``).

    ``hash_hex`` is the BLAKE3 of the *compressed* file, so the gateway can verify a
    variant before serving it without decompressing it.
    """

    coding: str
    level: int
    bytes: int
    filename: str
    hash_hex: str

    def __post_init__(self) -> None:
        if self.coding not in CODINGS:
            raise _bad(f"encodings.coding must be one of {', '.join(CODINGS)}")
        levels = _ZSTD_LEVELS if self.coding == "zstd" else _BROTLI_QUALITIES
        _check_int(self.level, f"encodings.level ({self.coding})", lo=levels[0], hi=levels[-1])
        _check_int(self.bytes, "encodings.bytes")
        _check_filename(self.filename, "encodings.filename")
        _check_hex(self.hash_hex, "encodings.hash_hex")


@dataclass(frozen=True, slots=True, kw_only=True)
class Split:
    """One share of a payment: ``pct`` percent (0-100) goes to ``account``."""

    account: str
    pct: float

    def __post_init__(self) -> None:
        _check_text(self.account, "payment.splits.account", max_len=256)
        object.__setattr__(
            self, "pct", _check_number(self.pct, "payment.splits.pct", lo=0.0, hi=100.0)
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Payment:
    """Payment terms (``[payment]``); the gateway enforces them when configured to.

    ``currency``, ``price_model``, ``price`` and ``wallet`` are copied into
    ``X-Payment-*`` response headers, hence the printable-ASCII rule for them.
    ``settlement`` is free-form ("onchain", "offchain", "custodial") and omitted from the
    file when empty, as are empty ``splits``. Splits may add up to less than 100 (the
    rest stays with ``wallet``) but never more.
    """

    required: bool
    currency: str
    price_model: str
    price: float
    wallet: str
    settlement: str = ""
    splits: tuple[Split, ...] = ()

    def __post_init__(self) -> None:
        _check_bool(self.required, "payment.required")
        _check_header_value(self.currency, "payment.currency", max_len=32)
        if self.price_model not in PRICE_MODELS:
            raise _bad(f"payment.price_model must be one of {', '.join(PRICE_MODELS)}")
        object.__setattr__(
            self, "price", _check_number(self.price, "payment.price", lo=0.0, hi=math.inf)
        )
        _check_header_value(self.wallet, "payment.wallet", max_len=256)
        _check_text(self.settlement, "payment.settlement", max_len=64, allow_empty=True)
        splits = tuple(self.splits)
        if not all(isinstance(s, Split) for s in splits):
            raise _bad("payment.splits must hold Split values")
        if sum(s.pct for s in splits) > 100.0 + _SPLIT_TOTAL_SLACK:
            raise _bad("payment.splits add up to more than 100 percent")
        object.__setattr__(self, "splits", splits)


@dataclass(frozen=True, slots=True, kw_only=True)
class Relations:
    """Threading and provenance (``[relations]``).

    ``parent`` and ``thread`` are addresses (written as ``b3:<hex>.<tld>``); ``source``
    is free-form provenance such as ``camera:sony-a7c``.
    """

    parent: Address | None = None
    thread: Address | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        for name in ("parent", "thread"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Address):
                raise _bad(f"relations.{name} must be an Address")
        if self.source is not None:
            _check_text(self.source, "relations.source", max_len=1024)

    @property
    def empty(self) -> bool:
        """True when no relation is set (the table is then left out of the file)."""
        return self.parent is None and self.thread is None and self.source is None


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """One bundle's Manifest.toml (schema v2).

    ``schema_version``, ``hash_algo`` and ``address`` are derived, not stored: they can
    only ever be ``2``, ``"b3"`` and ``b3:<hash_hex>.<tld>``, so holding them as fields
    would only create ways to disagree. :meth:`parse` checks the file's copies.
    ``ext`` maps a namespace to string key/values (``[ext.<ns>]``).
    """

    SCHEMA_VERSION: ClassVar[int] = SCHEMA_VERSION
    HASH_ALGO: ClassVar[str] = HASH_ALGO

    tld: str
    hash_hex: str
    bytes: int
    created_utc: str
    mime: str
    original_filename: str
    stored_filename: str = "payload.bin"
    license: str | None = None
    encodings: tuple[Encoding, ...] = ()
    payment: Payment | None = None
    relations: Relations | None = None
    ext: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_tld(self.tld, "tld")
        _check_hex(self.hash_hex, "hash_hex")
        _check_int(self.bytes, "bytes")
        object.__setattr__(self, "created_utc", _check_created_utc(self.created_utc))
        mime = _check_header_value(self.mime, "mime", max_len=255)
        if _MIME.fullmatch(mime) is None:
            raise _bad(f"mime is not a media type: {mime!r}")
        _check_filename(self.stored_filename, "stored_filename")
        name = _check_text(
            self.original_filename, "original_filename", max_len=255, allow_empty=True
        )
        if "/" in name or "\\" in name or name in (".", ".."):
            raise _bad("original_filename must be a bare file name, not a path")
        if self.license is not None:
            _check_text(self.license, "license", max_len=256)
        encodings = tuple(self.encodings)
        if not all(isinstance(e, Encoding) for e in encodings):
            raise _bad("encodings must hold Encoding values")
        codings = [e.coding for e in encodings]
        if len(set(codings)) != len(codings):
            raise _bad("encodings lists a coding twice")
        filenames = [e.filename for e in encodings] + [self.stored_filename, MANIFEST_NAME]
        if len(set(filenames)) != len(filenames):
            raise _bad("file names in a bundle must be distinct (and not Manifest.toml)")
        object.__setattr__(self, "encodings", encodings)
        if self.payment is not None and not isinstance(self.payment, Payment):
            raise _bad("payment must be a Payment")
        if self.relations is not None:
            if not isinstance(self.relations, Relations):
                raise _bad("relations must be Relations")
            if self.relations.empty:
                object.__setattr__(self, "relations", None)
        object.__setattr__(self, "ext", _check_ext(self.ext))

    @property
    def address(self) -> Address:
        """The bundle's address, tld included."""
        return Address(self.hash_hex, self.tld)

    def encoding(self, coding: str) -> Encoding | None:
        """The stored variant for ``coding`` ("zstd" or "br"), if the bundle has one."""
        for enc in self.encodings:
            if enc.coding == coding:
                return enc
        return None

    def render(self) -> str:
        """The Manifest.toml text: fixed key order, one canonical spelling, final newline."""
        lines = [
            f"schema_version = {SCHEMA_VERSION}",
            f"tld = {toml_str(self.tld)}",
            f"address = {toml_str(self.address.with_tld)}",
            f"hash_algo = {toml_str(HASH_ALGO)}",
            f"hash_hex = {toml_str(self.hash_hex)}",
            f"bytes = {toml_int(self.bytes)}",
            f"created_utc = {toml_str(self.created_utc)}",
            f"mime = {toml_str(self.mime)}",
            f"stored_filename = {toml_str(self.stored_filename)}",
            f"original_filename = {toml_str(self.original_filename)}",
        ]
        if self.license is not None:
            lines.append(f"license = {toml_str(self.license)}")
        for enc in self.encodings:
            lines += [
                "",
                "[[encodings]]",
                f"coding = {toml_str(enc.coding)}",
                f"level = {toml_int(enc.level)}",
                f"bytes = {toml_int(enc.bytes)}",
                f"filename = {toml_str(enc.filename)}",
                f"hash_hex = {toml_str(enc.hash_hex)}",
            ]
        if self.payment is not None:
            pay = self.payment
            lines += [
                "",
                "[payment]",
                f"required = {toml_bool(pay.required)}",
                f"currency = {toml_str(pay.currency)}",
                f"price_model = {toml_str(pay.price_model)}",
                f"price = {toml_float(pay.price)}",
                f"wallet = {toml_str(pay.wallet)}",
            ]
            if pay.settlement:
                lines.append(f"settlement = {toml_str(pay.settlement)}")
            if pay.splits:
                items = ", ".join(
                    f"{{ account = {toml_str(s.account)}, pct = {toml_float(s.pct)} }}"
                    for s in pay.splits
                )
                lines.append(f"splits = [{items}]")
        if self.relations is not None:
            rel = self.relations
            lines += ["", "[relations]"]
            if rel.parent is not None:
                lines.append(f"parent = {toml_str(rel.parent.with_tld)}")
            if rel.thread is not None:
                lines.append(f"thread = {toml_str(rel.thread.with_tld)}")
            if rel.source is not None:
                lines.append(f"source = {toml_str(rel.source)}")
        for namespace, values in self.ext.items():  # already sorted by _check_ext
            lines += ["", f"[ext.{namespace}]"]
            lines += [f"{toml_key(k)} = {toml_str(v)}" for k, v in values.items()]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str | builtins.bytes) -> Manifest:
        """Read and validate Manifest.toml; raise ``RonError(BAD_REQUEST)`` on any flaw.

        ``text`` may be the file's raw bytes (must be UTF-8) or already-decoded text.
        """
        if isinstance(text, builtins.bytes | bytearray):
            if len(text) > 4 * MAX_MANIFEST_LEN:
                raise _bad(f"file is larger than {MAX_MANIFEST_LEN} characters")
            try:
                text = builtins.bytes(text).decode("utf-8")
            except UnicodeDecodeError:
                raise _bad("file is not UTF-8") from None
        if not isinstance(text, str):
            raise _bad("expected TOML text")
        if len(text) > MAX_MANIFEST_LEN:
            raise _bad(f"file is larger than {MAX_MANIFEST_LEN} characters")
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise _bad(f"not valid TOML ({exc})") from None
        except RecursionError:
            raise _bad("TOML nested too deeply") from None
        return _manifest_from_doc(doc)


def _check_ext(ext: object) -> dict[str, dict[str, str]]:
    """Validate ``[ext.*]`` and return it as plain dicts sorted by namespace and key."""
    if not isinstance(ext, Mapping):
        raise _bad("ext must be a table of tables")
    result: dict[str, dict[str, str]] = {}
    for namespace in sorted(ext, key=lambda n: str(n)):
        values = ext[namespace]
        if not isinstance(namespace, str) or _EXT_NAMESPACE.fullmatch(namespace) is None:
            raise _bad(f"ext namespace {namespace!r} must be 1-64 of [A-Za-z0-9_-]")
        if not isinstance(values, Mapping):
            raise _bad(f"ext.{namespace} must be a table of strings")
        table: dict[str, str] = {}
        for key in sorted(values, key=lambda k: str(k)):
            _check_text(key, f"ext.{namespace} key", max_len=128)
            value = values[key]
            if not isinstance(value, str) or len(value) > 16384:
                raise _bad(f"ext.{namespace}.{key} must be a string of at most 16384 chars")
            _check_utf8(value, f"ext.{namespace}.{key}")
            table[key] = value
        result[namespace] = table
    return result


# --- TOML document -> dataclasses -------------------------------------------------------


class _Table:
    """Reads one TOML table, remembering which keys were used so extras are refused."""

    def __init__(self, raw: object, where: str) -> None:
        if not isinstance(raw, dict):
            raise _bad(f"{where} must be a table")
        self._raw: dict[str, Any] = raw
        self._where = where
        self._seen: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self._where}.{key}" if self._where else key

    def required(self, key: str) -> Any:
        self._seen.add(key)
        if key not in self._raw:
            raise _bad(f"missing key {self.name(key)}")
        return self._raw[key]

    def optional(self, key: str, default: Any = None) -> Any:
        self._seen.add(key)
        return self._raw.get(key, default)

    def finish(self) -> None:
        extra = sorted(set(self._raw) - self._seen)
        if extra:
            raise _bad(f"unknown key {self.name(extra[0])}")


def _manifest_from_doc(doc: dict[str, Any]) -> Manifest:
    top = _Table(doc, "")
    version = top.required("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:  # 2.0 == 2, but is a float
        raise _bad(f"schema_version must be {SCHEMA_VERSION}, got {version!r}")
    if top.required("hash_algo") != HASH_ALGO:
        raise _bad(f"hash_algo must be {HASH_ALGO!r}")
    tld = _check_tld(top.required("tld"), "tld")
    hash_hex = _check_hex(top.required("hash_hex"), "hash_hex")
    address_text = top.required("address")
    if not isinstance(address_text, str):
        raise _bad("address must be a string")
    try:
        address = parse_address(address_text)
    except RonError as exc:
        raise _bad(f"address: {exc.message}") from None
    if address.hex != hash_hex:
        raise _bad("address does not match hash_hex")
    if address.tld is not None and address.tld != tld:
        raise _bad("address tld does not match tld")

    manifest = Manifest(
        tld=tld,
        hash_hex=hash_hex,
        bytes=top.required("bytes"),
        created_utc=top.required("created_utc"),
        mime=top.required("mime"),
        stored_filename=top.required("stored_filename"),
        original_filename=top.required("original_filename"),
        license=top.optional("license"),
        encodings=_encodings(top.optional("encodings", [])),
        payment=_payment(top.optional("payment")),
        relations=_relations(top.optional("relations")),
        ext=top.optional("ext", {}),
    )
    top.finish()
    return manifest


def _encodings(raw: object) -> tuple[Encoding, ...]:
    if not isinstance(raw, list):
        raise _bad("encodings must be an array of tables ([[encodings]])")
    result = []
    for item in raw:
        table = _Table(item, "encodings")
        result.append(
            Encoding(
                coding=table.required("coding"),
                level=table.required("level"),
                bytes=table.required("bytes"),
                filename=table.required("filename"),
                hash_hex=table.required("hash_hex"),
            )
        )
        table.finish()
    return tuple(result)


def _payment(raw: object) -> Payment | None:
    if raw is None:
        return None
    table = _Table(raw, "payment")
    splits_raw = table.optional("splits", [])
    if not isinstance(splits_raw, list):
        raise _bad("payment.splits must be an array of {account, pct} tables")
    splits = []
    for item in splits_raw:
        split = _Table(item, "payment.splits")
        splits.append(Split(account=split.required("account"), pct=split.required("pct")))
        split.finish()
    payment = Payment(
        required=table.required("required"),
        currency=table.required("currency"),
        price_model=table.required("price_model"),
        price=table.required("price"),
        wallet=table.required("wallet"),
        settlement=table.optional("settlement", ""),
        splits=tuple(splits),
    )
    table.finish()
    return payment


def _relations(raw: object) -> Relations | None:
    if raw is None:
        return None
    table = _Table(raw, "relations")
    addresses: dict[str, Address | None] = {}
    for key in ("parent", "thread"):
        value = table.optional(key)
        if value is None:
            addresses[key] = None
            continue
        if not isinstance(value, str):
            raise _bad(f"relations.{key} must be an address string")
        try:
            addresses[key] = parse_address(value)
        except RonError as exc:
            raise _bad(f"relations.{key}: {exc.message}") from None
    relations = Relations(
        parent=addresses["parent"], thread=addresses["thread"], source=table.optional("source")
    )
    table.finish()
    return relations
