"""The I/O-free half of the SDK: configuration, request building, reply parsing and the
state of verified downloads. :mod:`ron.sdk.client` and :mod:`ron.sdk.aclient` are thin
shells around it that only send, sleep and stream, so sync and async behave alike by
construction.

A logical call is a :class:`Call`: what to send, which statuses are answers rather than
errors, how to turn the answer into a value, and whether the call may be sent twice.
Reads of content are a :class:`Download`, which verifies BLAKE3 as bytes arrive and
knows how to resume after a broken transfer with a ``Range`` request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import mimetypes
import os
import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import quote

import blake3

import ron
from ron.proto.address import Address, parse_address
from ron.proto.envelope import RonError, new_corr_id
from ron.proto.manifest import Manifest
from ron.sdk import mailbox as mb
from ron.sdk.errors import (
    BadRequest,
    IntegrityError,
    InternalError,
    NotFound,
    RonClientError,
    error_from_response,
)
from ron.sdk.retry import Attempts, RetryEvent, RetryPolicy

__all__ = [
    "DEFAULT_NODE_URL",
    "Call",
    "ClientConfig",
    "ClientCore",
    "Download",
    "InvalidArgument",
    "ObjectStat",
    "PutBody",
    "config_from_env",
]

T = TypeVar("T")

DEFAULT_NODE_URL = "http://127.0.0.1:8080"
CHUNK = 256 * 1024
USER_AGENT = f"ron-sdk-python/{ron.__version__}"
_SANE_CORR_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Message headers travel as HTTP headers (X-Ron-Header-<name>): refuse what HTTP cannot
# carry before sending; the node applies its own, stricter limits.
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
# Answers from the node arrive within this much of the client timeout while a long-poll
# waits: the request timeout is wait_s plus this margin.
LONG_POLL_MARGIN_S = 10.0
SUBSCRIBE_READ_TIMEOUT_S = 60.0  # the node sends a keepalive at least every 15 s


class InvalidArgument(BadRequest, ValueError):
    """A bad argument caught before anything was sent (also a ``ValueError``)."""


class Reply(Protocol):
    """What the shells hand to parsers: an HTTP response that has been read."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def content(self) -> bytes: ...


# --- configuration ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Where the node is and how to talk to it.

    ``api_key`` is sent as ``X-Api-Key`` (it selects the quota tenant); ``cap`` is a
    capability token sent as ``Authorization: Bearer`` (writes and mailbox operations
    need one).
    Neither is ever logged or included in an exception.
    """

    base_url: str = DEFAULT_NODE_URL
    api_key: str | None = field(default=None, repr=False)
    cap: str | None = field(default=None, repr=False)
    timeout_s: float = 30.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    local_owner: bool = True
    """With no ``cap``: present the owner token of the local node when ``base_url`` is
    that node's own URL (see :mod:`ron.localnode`); never for any other node."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise InvalidArgument(f"node URL must be http:// or https://, got {self.base_url!r}")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if self.cap is None and self.local_owner:
            from ron.localnode import owner_token_for

            object.__setattr__(self, "cap", owner_token_for(self.base_url))
        if self.timeout_s <= 0:
            raise InvalidArgument("timeout must be > 0")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ClientConfig:
        """``RON_NODE_URL`` (default http://127.0.0.1:8080), ``RON_API_KEY``, ``RON_CAP``;
        keyword arguments win over the environment."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {
            "base_url": source.get("RON_NODE_URL") or DEFAULT_NODE_URL,
            "api_key": source.get("RON_API_KEY") or None,
            "cap": source.get("RON_CAP") or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def config_from_env(
    env: Mapping[str, str] | None, kwargs: dict[str, Any]
) -> tuple[ClientConfig, dict[str, Any]]:
    """Split a ``from_env(**kwargs)`` call into the config and the client's own options."""
    renames = {"timeout": "timeout_s"}
    own = {"timeout", "retry", "api_key", "cap", "base_url"}
    overrides = {renames.get(k, k): v for k, v in kwargs.items() if k in own}
    rest = {k: v for k, v in kwargs.items() if k not in own}
    return ClientConfig.from_env(env, **overrides), rest


def check_corr_id(corr_id: str | None) -> str:
    """The caller's correlation id (validated: the node would replace an odd one, and
    then the log line would not carry it), or a fresh one."""
    if corr_id is None:
        return new_corr_id()
    if not isinstance(corr_id, str) or not _SANE_CORR_ID.fullmatch(corr_id):
        raise InvalidArgument("corr_id must be 1-64 characters of [A-Za-z0-9._-]")
    return corr_id


def to_address(addr: Address | str) -> Address:
    if isinstance(addr, Address):
        return addr
    try:
        return parse_address(addr)
    except RonError as exc:
        raise InvalidArgument(exc.message) from None


def object_path(addr: Address, rel: str = "") -> str:
    return f"/o/{addr.with_tld}" + (f"/{rel}" if rel else "")


def topic_path(topic: str, rest: str = "") -> str:
    if not isinstance(topic, str) or not mb_topic_ok(topic):
        raise InvalidArgument("topic must be 1-128 characters of letters, digits, . _ -")
    return f"/v1/mailbox/{quote(topic, safe='')}" + rest


def mb_topic_ok(topic: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9._-]{1,128}", topic) is not None


# --- calls --------------------------------------------------------------------------


@dataclass(slots=True)
class Call(Generic[T]):
    """One logical request: sent once, or again on a retryable failure."""

    method: str
    path: str
    parse: Callable[[Reply], T]
    corr_id: str
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    body: PutBody | None = None
    replayable: bool = True
    answers: frozenset[int] = frozenset()  # non-2xx statuses that ``parse`` handles
    extra_timeout_s: float = 0.0

    def plain_body(self, limit: int) -> tuple[bool, bytes | None]:
        """Whether the call may go on a plain connection (``ron.sdk.wire``: no body, or
        one held in memory of at most ``limit`` bytes), and that body."""
        if self.body is None:
            held = self.content
        else:
            held = self.body.held_bytes()
            if held is None:
                return False, None  # a file or a stream: httpx streams it
        return held is None or len(held) <= limit, held

    def error_of(self, reply: Reply) -> RonClientError | None:
        """The typed error for an error reply, or None when it is an answer."""
        status = reply.status_code
        if 200 <= status < 300 or status in self.answers:
            return None
        return error_from_response(status, reply.headers, reply.content, corr_id=self.corr_id)


class PutBody:
    """A PUT body that knows whether it can be sent again and what it hashes to.

    Bytes and files are replayable (each attempt rereads them from the start) and a
    retried PUT is harmless: the same bytes land at the same address. A one-shot iterator
    is sent once, never retried. Whatever the kind, the bytes are hashed as they are sent
    and the node's answer must be that hash.
    """

    def __init__(self, data: object, *, asynchronous: bool) -> None:
        self.size: int | None = None
        self.path: Path | None = None
        self._bytes: bytes | None = None
        self._stream: Iterable[bytes] | AsyncIterable[bytes] | None = None
        self._hasher: Any = None
        self._consumed = False
        if isinstance(data, bytes | bytearray | memoryview):
            self._bytes = bytes(data)
            self.size = len(self._bytes)
            self._bytes_hex = blake3.blake3(self._bytes).hexdigest()
        elif isinstance(data, os.PathLike):
            self.path = Path(data)
            try:
                self.size = self.path.stat().st_size
            except OSError as exc:
                raise InvalidArgument(f"cannot read {self.path}: {exc.strerror}") from None
        elif isinstance(data, str):
            raise InvalidArgument(
                "put() takes bytes, a pathlib.Path or an iterator of bytes; "
                "encode text first or wrap a file name in Path()"
            )
        elif isinstance(data, AsyncIterable):
            if not asynchronous:
                raise InvalidArgument("an async iterator needs AsyncClient")
            self._stream = data
        elif isinstance(data, Iterable):
            self._stream = data
        else:
            raise InvalidArgument(f"cannot put a {type(data).__name__}")

    @property
    def replayable(self) -> bool:
        return self._stream is None

    def headers(self) -> dict[str, str]:
        return {} if self.size is None else {"content-length": str(self.size)}

    def sent_hex(self) -> str | None:
        """BLAKE3 of what the last attempt sent, if it sent everything."""
        if self._bytes is not None:
            return self._bytes_hex
        if self._hasher is None:
            return None
        return self._hasher.hexdigest()  # type: ignore[no-any-return]

    def _start(self) -> Any:
        if self._stream is not None:
            if self._consumed:
                raise RuntimeError("a one-shot stream body cannot be sent twice")
            self._consumed = True
        self._hasher = blake3.blake3()
        return self._hasher

    def sync_content(self) -> bytes | Iterator[bytes]:
        if self._bytes is not None:
            return self._bytes
        hasher = self._start()
        if self.path is not None:
            return _file_chunks(self.path, hasher)
        assert isinstance(self._stream, Iterable)
        return _hashed(iter(self._stream), hasher)

    def held_bytes(self) -> bytes | None:
        """The body when it is bytes held in memory; None for a file or a stream."""
        return self._bytes

    def async_content(self) -> bytes | AsyncIterator[bytes]:
        if self._bytes is not None:
            return self._bytes
        hasher = self._start()
        if self.path is not None:
            return _afile_chunks(self.path, hasher)
        return _ahashed(self._stream, hasher)


def _chunk_bytes(chunk: object) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, bytearray | memoryview):
        return bytes(chunk)
    raise InvalidArgument(f"stream bodies must yield bytes, not {type(chunk).__name__}")


def _file_chunks(path: Path, hasher: Any) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
            yield chunk


async def _afile_chunks(path: Path, hasher: Any) -> AsyncIterator[bytes]:
    f = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            hasher.update(chunk)
            yield chunk
    finally:
        f.close()


def _hashed(chunks: Iterator[object], hasher: Any) -> Iterator[bytes]:
    for chunk in chunks:
        data = _chunk_bytes(chunk)
        hasher.update(data)
        yield data


async def _ahashed(
    source: Iterable[bytes] | AsyncIterable[bytes] | None, hasher: Any
) -> AsyncIterator[bytes]:
    if isinstance(source, AsyncIterable):
        async for chunk in source:
            data = _chunk_bytes(chunk)
            hasher.update(data)
            yield data
    elif source is not None:
        for chunk in source:
            data = _chunk_bytes(chunk)
            hasher.update(data)
            yield data


# --- content: stat ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ObjectStat:
    """What the node knows about an object (HEAD plus its Manifest.toml)."""

    address: Address
    size: int
    mime: str
    etag: str
    tld: str
    original_filename: str
    license: str | None
    parent: Address | None
    created_utc: str
    payment_required: bool
    manifest: Manifest = field(repr=False)


@dataclass(frozen=True, slots=True)
class _Head:
    size: int
    mime: str
    etag: str
    payment_required: bool


# --- downloads ----------------------------------------------------------------------


class Download:
    """A verified, resumable read of one object (or one byte range of it).

    Bytes are hashed as they arrive (contiguously from offset 0); the read of a whole
    object ends with the digest compared to the address, so a mismatch raises
    :class:`IntegrityError` before the caller is told the read succeeded. A transfer that
    breaks midway resumes with ``Range: bytes=<next>-``, and the hash carries on.

    The node breaks the connection (rather than finish the body) when it finds on the fly
    that its stored copy is corrupt, and then quarantines the object. A read that broke
    or got a 500 and is then told 404 therefore reports the object as failing integrity,
    not as missing: content-addressed objects do not disappear mid-read otherwise.
    """

    def __init__(
        self, addr: Address, *, corr_id: str, start: int = 0, end: int | None = None
    ) -> None:
        if start < 0 or (end is not None and end <= start):
            raise InvalidArgument("range must be (start, end) with 0 <= start < end")
        self.addr = addr
        self.corr_id = corr_id
        self.start = start
        self.end = end
        self.delivered = 0
        self.total: int | None = None
        self.mime: str | None = None
        self.verified = False
        self._hasher = blake3.blake3()
        self._hashed = 0
        self._pos = 0
        self._suspect = False

    @property
    def path(self) -> str:
        return object_path(self.addr)

    @property
    def ranged(self) -> bool:
        return self.start > 0 or self.end is not None

    @property
    def next_offset(self) -> int:
        return self.start + self.delivered

    def _stop(self) -> int | None:
        if self.total is None:
            return self.end
        return self.total if self.end is None else min(self.end, self.total)

    def complete(self) -> bool:
        stop = self._stop()
        return self.total is not None and stop is not None and self.next_offset >= stop

    def request_headers(self) -> dict[str, str]:
        # identity: the bytes hashed are the bytes addressed, and ranges stay byte exact.
        headers = {"accept-encoding": "identity"}
        offset = self.next_offset
        if offset > 0 or self.end is not None:
            last = "" if self.end is None else str(self.end - 1)
            headers["range"] = f"bytes={offset}-{last}"
        return headers

    def on_response(self, status: int, headers: Mapping[str, str]) -> None:
        """Check the answer's headers before any of its body is used."""
        etag = headers.get("etag")
        if etag is not None and etag != self.addr.etag:
            raise self._integrity(f"the node answered with entity {etag}, not {self.addr.etag}")
        if status == 206:
            match = _CONTENT_RANGE.fullmatch(headers.get("content-range", ""))
            if match is None:
                raise self._integrity("a 206 answer without a valid Content-Range")
            first, total = int(match.group(1)), int(match.group(3))
            if first > self.next_offset:
                raise self._integrity("the node skipped bytes that were asked for")
            self._pos = first
        elif status == 200:
            length = headers.get("content-length")
            total = int(length) if length is not None and length.isdigit() else -1
            self._pos = 0
        else:
            raise self._integrity(f"unexpected status {status} for a read")
        if total >= 0:
            if self.total is not None and self.total != total:
                raise self._integrity("the object's size changed between attempts")
            self.total = total
        self.mime = headers.get("content-type", self.mime)

    def feed(self, chunk: bytes) -> bytes:
        """Hash what continues the verified prefix; return the part the caller asked for."""
        pos = self._pos
        n = len(chunk)
        self._pos = pos + n
        if pos <= self._hashed < pos + n:
            self._hasher.update(memoryview(chunk)[self._hashed - pos :])
            self._hashed = pos + n
        lo = max(pos, self.next_offset)
        hi = pos + n if self.end is None else min(pos + n, self.end)
        if hi <= lo:
            return b""
        out = chunk[lo - pos : hi - pos]
        self.delivered += len(out)
        return out

    def finish(self) -> bool:
        """The answer's body ended. False when more is needed (another attempt resumes);
        raises IntegrityError when the whole object was seen and does not hash to it."""
        if self.total is None:
            self.total = self._pos
        if self._hashed == self.total:
            if self._hasher.hexdigest() != self.addr.hex:
                raise self._integrity(
                    f"the {self.total} bytes received do not hash to {self.addr.canonical}"
                )
            self.verified = True
        return self.complete()

    def interrupted(self) -> None:
        """The body broke off after the answer started."""
        self._suspect = True

    def on_error(self, error: RonClientError) -> RonClientError:
        if isinstance(error, InternalError):
            self._suspect = True
        elif isinstance(error, NotFound) and self._suspect:
            withdrawn = self._integrity(
                "the node withdrew the object mid-read: its stored copy failed "
                "verification and was quarantined"
            )
            withdrawn.status = error.status
            return withdrawn
        return error

    def _integrity(self, message: str) -> IntegrityError:
        return IntegrityError(f"{self.addr.canonical}: {message}", corr_id=self.corr_id)


# --- the shared core ----------------------------------------------------------------


class ClientCore:
    """Everything the sync and async clients do alike: headers, call building, parsing."""

    def __init__(
        self, config: ClientConfig, on_retry: Callable[[RetryEvent], None] | None = None
    ) -> None:
        self.config = config
        self.on_retry = on_retry

    # --- plumbing -----------------------------------------------------------------------

    def headers(self, corr_id: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"user-agent": USER_AGENT, "x-corr-id": corr_id}
        if self.config.api_key:
            headers["x-api-key"] = self.config.api_key
        if self.config.cap:
            headers["authorization"] = f"Bearer {self.config.cap}"
        if extra:
            headers.update(extra)
        return headers

    def attempts(self, corr_id: str, *, replayable: bool = True) -> Attempts:
        return Attempts(
            self.config.retry, corr_id=corr_id, replayable=replayable, on_retry=self.on_retry
        )

    def timeout(self, call: Call[Any] | None = None) -> float:
        return self.config.timeout_s + (call.extra_timeout_s if call is not None else 0.0)

    # --- content ------------------------------------------------------------------------

    def put(
        self,
        body: PutBody,
        *,
        tld: str | None,
        mime: str | None,
        license: str | None,
        parent: Address | str | None,
        filename: str | None,
        corr_id: str | None,
    ) -> Call[Address]:
        params: dict[str, str] = {}
        if tld is not None:
            params["tld"] = tld
        if filename is None and body.path is not None:
            filename = body.path.name
        if filename:
            params["filename"] = filename
        if license is not None:
            params["license"] = license
        if parent is not None:
            params["parent"] = to_address(parent).canonical
        if mime is None and filename:
            mime = mimetypes.guess_type(filename)[0]
        corr = check_corr_id(corr_id)
        headers = {"content-type": mime or "application/octet-stream", **body.headers()}

        def parse(reply: Reply) -> Address:
            data = mb.json_object(reply.content)
            try:
                got = parse_address(str(data.get("address")))
            except RonError:
                raise mb.ProtocolMismatch("reply has no valid address") from None
            sent = body.sent_hex()
            if sent is not None and sent != got.hex:
                raise IntegrityError(
                    f"the node stored b3:{got.hex} but the bytes sent hash to b3:{sent}",
                    corr_id=corr,
                )
            reply_tld = data.get("tld")
            return Address(got.hex, reply_tld if isinstance(reply_tld, str) else tld)

        return Call(
            "POST",
            "/put",
            parse,
            corr,
            params=params,
            headers=headers,
            body=body,
            replayable=body.replayable,
        )

    def download(
        self, addr: Address | str, *, corr_id: str | None, range: tuple[int, int | None] | None
    ) -> Download:
        start, end = (0, None) if range is None else range
        return Download(to_address(addr), corr_id=check_corr_id(corr_id), start=start, end=end)

    def head(self, addr: Address | str, corr_id: str) -> Call[_Head | None]:
        """HEAD: the answer's headers, or None for a 404 (``exists`` needs no exception)."""

        def parse(reply: Reply) -> _Head | None:
            if reply.status_code == 404:
                return None
            h = reply.headers
            length = h.get("content-length", "")
            return _Head(
                size=int(length) if length.isdigit() else -1,
                mime=h.get("content-type", "application/octet-stream"),
                etag=h.get("etag", ""),
                payment_required=reply.status_code == 402 or h.get("x-payment-required") == "true",
            )

        return Call(
            "HEAD",
            object_path(to_address(addr)),
            parse,
            corr_id,
            headers={"accept-encoding": "identity"},
            answers=frozenset({402, 404}),
        )

    def manifest(self, addr: Address | str, corr_id: str) -> Call[Manifest]:
        address = to_address(addr)

        def parse(reply: Reply) -> Manifest:
            try:
                manifest = Manifest.parse(reply.content)
            except RonError as exc:
                raise IntegrityError(
                    f"{address.canonical}: Manifest.toml is invalid ({exc.message})",
                    corr_id=corr_id,
                ) from None
            if manifest.hash_hex != address.hex:
                raise IntegrityError(
                    f"{address.canonical}: the node sent the manifest of b3:{manifest.hash_hex}",
                    corr_id=corr_id,
                )
            return manifest

        return Call("GET", object_path(address, "Manifest.toml"), parse, corr_id)

    @staticmethod
    def found(head: _Head | None, addr: Address | str, corr_id: str) -> _Head:
        if head is None:
            raise NotFound(f"no object {addr} on this node", status=404, corr_id=corr_id)
        return head

    @staticmethod
    def stat_of(addr: Address | str, head: _Head, manifest: Manifest) -> ObjectStat:
        address = to_address(addr)
        rel = manifest.relations
        return ObjectStat(
            address=Address(address.hex, manifest.tld),
            size=manifest.bytes,
            mime=head.mime,
            etag=head.etag,
            tld=manifest.tld,
            original_filename=manifest.original_filename,
            license=manifest.license,
            parent=rel.parent if rel is not None else None,
            created_utc=manifest.created_utc,
            payment_required=head.payment_required
            or bool(manifest.payment and manifest.payment.required),
            manifest=manifest,
        )

    # --- mailbox ------------------------------------------------------------------------

    def send(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview | str,
        *,
        headers: Mapping[str, str] | None,
        idempotency_key: str | None,
        corr_id: str | None,
    ) -> Call[mb.SendResult]:
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        # One key per logical send, made here and reused by every retry: a send whose
        # answer was lost is stored once, however often it is retried.
        key = idempotency_key if idempotency_key is not None else f"sdk-{secrets.token_hex(16)}"
        wire = {"content-type": "application/octet-stream", "idempotency-key": key}
        for name, value in (headers or {}).items():
            if not isinstance(name, str) or _HEADER_NAME.fullmatch(name) is None:
                raise InvalidArgument(
                    "message header names are 1-64 characters of letters, digits, . _ -"
                )
            if not isinstance(value, str) or _HEADER_VALUE.fullmatch(value) is None:
                raise InvalidArgument("message header values are printable ASCII")
            wire[f"x-ron-header-{name.lower()}"] = value
        return Call(
            "POST",
            topic_path(topic, "/messages"),
            lambda r: mb.send_result(mb.json_object(r.content), key),
            check_corr_id(corr_id),
            headers=wire,
            content=data,
        )

    def send_batch(
        self,
        topic: str,
        items: Iterable[bytes | tuple[bytes, Mapping[str, str]]],
        corr_id: str | None,
    ) -> Call[list[mb.SendResult]]:
        entries: list[dict[str, Any]] = []
        keys: list[str] = []
        # One random stem per batch, numbered per message: as unique as a random key
        # each, and the batch's keys sit side by side in the node's deduplication index,
        # so storing them dirties one or two pages instead of one per message (measured
        # in the store: a batch of 10 sent in 350-375 us instead of 580-680).
        stem = f"sdk-{secrets.token_hex(16)}"
        for item in items:
            payload, hdrs = (item, {}) if isinstance(item, bytes | bytearray) else item
            key = f"{stem}-{len(keys)}"
            keys.append(key)
            entries.append(
                {
                    "payload_b64": base64.b64encode(bytes(payload)).decode("ascii"),
                    "headers": dict(hdrs),
                    "idempotency_key": key,
                }
            )
        if not entries:
            raise InvalidArgument("send_batch needs at least one message")

        def parse(reply: Reply) -> list[mb.SendResult]:
            data = mb.json_object(reply.content)
            results = data.get("messages")
            if not isinstance(results, list) or len(results) != len(keys):
                raise mb.ProtocolMismatch("batch reply does not match the batch")
            return [mb.send_result(r, k) for r, k in zip(results, keys, strict=True)]

        return self._json_call(
            "POST", topic_path(topic, "/batch"), {"messages": entries}, parse, corr_id
        )

    def receive(
        self,
        topic: str,
        *,
        max: int,
        visibility_s: float | None,
        wait_s: float,
        corr_id: str | None,
        ack: str | mb.Message | Iterable[str | mb.Message] | None = None,
    ) -> Call[list[mb.Message]]:
        body: dict[str, Any] = {"max": max, "wait_s": wait_s}
        if visibility_s is not None:
            body["visibility_s"] = visibility_s
        if ack is not None:
            items = ack if isinstance(ack, str | mb.Message) else list(ack)
            if items:  # nothing to ack (the loop's first receive) is a plain receive
                body["ack"] = mb.receipts_of(items)
        call = self._json_call(
            "POST",
            topic_path(topic, "/receive"),
            body,
            lambda r: mb.messages(topic, mb.json_object(r.content)),
            corr_id,
        )
        call.extra_timeout_s = wait_s + LONG_POLL_MARGIN_S if wait_s > 0 else 0.0
        return call

    def settle(
        self,
        verb: str,
        receipts: str | mb.Message | Iterable[str | mb.Message],
        extra: Mapping[str, Any],
        corr_id: str | None,
    ) -> Call[mb.Settled]:
        done_key = {"ack": "acked", "nack": "released", "extend": "extended"}[verb]
        body = {"receipts": mb.receipts_of(receipts), **extra}
        return self._json_call(
            "POST",
            f"/v1/mailbox/{verb}",
            body,
            lambda r: mb.settled(mb.json_object(r.content), done_key),
            corr_id,
        )

    def delete(self, topic: str, msg_id: str, corr_id: str | None) -> Call[None]:
        if not isinstance(msg_id, str) or not re.fullmatch(r"[0-9A-Za-z]{26}", msg_id):
            raise InvalidArgument("msg_id is not a ULID")
        return Call(
            "DELETE",
            topic_path(topic, f"/messages/{msg_id}"),
            lambda r: None,
            check_corr_id(corr_id),
        )

    def stats(self, topic: str, corr_id: str | None) -> Call[mb.TopicStats]:
        return Call(
            "GET",
            topic_path(topic, "/stats"),
            lambda r: mb.topic_stats(mb.json_object(r.content)),
            check_corr_id(corr_id),
        )

    def dlq_list(
        self, topic: str, *, limit: int, cursor: str | None, corr_id: str | None
    ) -> Call[mb.DeadLetterPage]:
        params = {"limit": str(limit)}
        if cursor is not None:
            params["cursor"] = cursor
        return Call(
            "GET",
            topic_path(topic, "/dlq"),
            lambda r: mb.dead_letter_page(mb.json_object(r.content)),
            check_corr_id(corr_id),
            params=params,
        )

    def dlq_redrive(
        self, topic: str, *, msg_ids: Iterable[str] | None, max: int, corr_id: str | None
    ) -> Call[int]:
        # Either the given dead letters or the oldest ``max`` of them (HTTP-API.md).
        body: dict[str, Any] = {"msg_ids": list(msg_ids)} if msg_ids is not None else {"max": max}

        def parse(reply: Reply) -> int:
            return int(mb._field(mb.json_object(reply.content), "redriven", int))

        return self._json_call("POST", topic_path(topic, "/dlq/redrive"), body, parse, corr_id)

    def subscribe_request(
        self, topic: str, *, visibility_s: float | None, max_unacked: int | None
    ) -> tuple[str, dict[str, str]]:
        params: dict[str, str] = {}
        if visibility_s is not None:
            params["visibility_s"] = repr(float(visibility_s))
        if max_unacked is not None:
            params["max_unacked"] = str(int(max_unacked))
        return topic_path(topic, "/subscribe"), params

    def _json_call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any],
        parse: Callable[[Reply], T],
        corr_id: str | None,
    ) -> Call[T]:
        return Call(
            method,
            path,
            parse,
            check_corr_id(corr_id),
            headers={"content-type": "application/json"},
            content=json.dumps(body, separators=(",", ":")).encode(),
        )
