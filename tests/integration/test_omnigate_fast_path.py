"""Omnigate's fast path answers exactly as the ordinary path would, or leaves it alone.

In process, over real files: two omnigates over one data dir, alike in everything but
that one lets the storage application offer its fast path (``App.fast_get``) and the
other does not. Each request is sent to both, on protocols whose transport records
what is written; the bytes, the golden metrics and the quota charged must be the same,
and only the fast one may count a fast answer. Error frames carry a random log
correlation id (and a 503 a jittered retry delay): only those are blanked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from ron.auth import Authority, Token, caveat, token_caveats
from ron.auth.guard import Guard
from ron.kernel.config import CapsConfig, OmnigateConfig
from ron.kernel.metrics import Metrics
from ron.proto.address import parse_address
from ron.proto.bundle import PRIVATE_MARKER
from ron.proto.oap import AppId, Flags, Frame, FrameDecoder, encode_frame
from ron.services.omnigate.apps import StorageApp
from ron.services.omnigate.gate import App, Gate
from ron.services.omnigate.server import OapServerProtocol
from ron.services.overlay import reader as reader_module
from ron.services.overlay.reader import ContentReader
from ron.services.storage.store import ObjectStore

OVERLAP = 86400.0
ONE_SHOT = Flags.REQ | Flags.START | Flags.END
HELLO = encode_frame(Frame(Flags(0), corr_id=5))


class Transport:
    """What a protocol wrote, in order, as one byte string."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, parts: list[bytes | memoryview]) -> None:
        for part in parts:
            self.out += part

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def take(self) -> bytes:
        data, self.out = bytes(self.out), bytearray()
        return data


@dataclass
class Side:
    """One omnigate: its gate, metrics and one open connection."""

    gate: Gate
    metrics: Metrics
    guard: Guard
    proto: OapServerProtocol
    transport: Transport

    def send(self, data: bytes) -> bytes:
        self.proto.data_received(data)
        return self.transport.take()

    def golden(self) -> list[str]:
        """The exposition's request metrics, latency sums left out (times differ)."""
        text = self.metrics.render().decode()
        keep = ("requests_total{", "bytes_in_total{", "bytes_out_total{", "quota_exhaust")
        lines = [line for line in text.splitlines() if line.startswith(keep)]
        lines += [
            line
            for line in text.splitlines()
            if line.startswith(("request_latency_seconds_count", "rejected_total{"))
        ]
        return sorted(lines)


@dataclass
class World:
    data: Path
    authority: Authority
    token: bytes
    addrs: dict[str, str]
    fast: Side
    plain: Side

    def both(self, data: bytes) -> tuple[bytes, bytes]:
        """``data`` sent to both sides: what each wrote back."""
        return self.fast.send(data), self.plain.send(data)

    def mint(self, **kw: Any) -> bytes:
        kw.setdefault("tenant", "acme")
        return self.authority.mint(token_caveats(**kw)).serialize().encode()

    @property
    def fast_answers(self) -> int:
        return self.fast.gate.fast_answers


def get(addr: str, corr_id: int = 1, *, cap: bytes, flags: Flags = ONE_SHOT) -> bytes:
    payload = json.dumps({"op": "get", "addr": addr}).encode()
    frame = Frame(flags, app_proto_id=AppId.STORAGE, corr_id=corr_id, cap=cap, payload=payload)
    return encode_frame(frame)


def stable(wire: bytes) -> list[tuple[int, int, int, int, bytes]]:
    """The frames of ``wire`` (flags, code, app, corr_id, payload), with an error
    frame's log correlation id and retry delay blanked."""
    frames = FrameDecoder().feed(wire)
    out = []
    for f in frames:
        payload = f.payload
        if f.code:
            body = json.loads(payload)
            body["corr_id"] = "*"
            for key in ("retry_after_ms", "retry_after"):
                if key in body:
                    body[key] = "*"
            payload = json.dumps(body, sort_keys=True).encode()
        out.append((int(f.flags), f.code, f.app_proto_id, f.corr_id, payload))
    return out


async def _put(store: ObjectStore, data: bytes) -> str:
    async def chunks() -> AsyncIterator[bytes]:
        yield data

    manifest, _ = await store.put_stream(chunks(), tld="bin", mime="application/octet-stream")
    return manifest.address.with_tld  # no index here: the tld finds the bundle


def _side(data: Path, settings: OmnigateConfig, *, fast: bool) -> Side:
    metrics = Metrics()
    guard = Guard(data, CapsConfig(rotation_overlap_s=OVERLAP))
    # Every call looks at the key and revocation files (the service looks every 100 ms):
    # a revocation or rotation made by the test applies to the very next request.
    guard.verifier.refresh_every_s = 0.0
    # Stat the kept payload's file on every request (the service does every 0.25 s), so
    # a file the test changes is noticed by the very next request, as by the ordinary path.
    reader = ContentReader(ObjectStore(data), data / "no-index.db", metrics, recheck_s=0.0)
    storage = StorageApp(reader, lambda: None, guard)
    apps = {
        AppId.STORAGE: App(
            "storage", storage, eager=True, fast_get=storage.fast_get if fast else None
        )
    }
    gate = Gate(settings, metrics, apps, tls=False, guard=guard)
    transport = Transport()
    proto = OapServerProtocol(gate)
    proto.connection_made(cast(asyncio.Transport, transport))
    return Side(gate, metrics, guard, proto, transport)


SIZES = {"small": 1024, "empty": 0, "mid": 20 * 1024, "large": 100 * 1024, "private": 512}


@pytest.fixture
async def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    # Payload files written just now are kept at once (they are otherwise kept only
    # once a second old, file times being coarse).
    monkeypatch.setattr(reader_module, "SETTLE_NS", 0)
    data = tmp_path / "data"
    authority = Authority(data, overlap_s=OVERLAP, actor="test")
    authority.keyring.ensure()
    store = ObjectStore(data)
    store.ensure_dirs()
    addrs = {name: await _put(store, os.urandom(size)) for name, size in SIZES.items()}
    private = store.bundle_dir(parse_address(addrs["private"])) / PRIVATE_MARKER
    private.touch()
    settings = dataclasses.replace(OmnigateConfig(), tls=False)
    token = authority.mint(token_caveats(tenant="acme")).serialize().encode()
    w = World(
        data,
        authority,
        token,
        addrs,
        _side(data, settings, fast=True),
        _side(data, settings, fast=False),
    )
    yield w
    for side in (w.fast, w.plain):
        side.proto.connection_lost(None)


def warm(w: World, addr: str, cap: bytes | None = None) -> None:
    """One GET on each side through the ordinary path: the token is verified, the
    request parsed and the payload read, verified and kept."""
    fast, plain = w.both(get(addr, 99, cap=cap or w.token))
    assert fast == plain and stable(fast)[-1][1] == 0


# --- answered on the spot --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small", "empty", "mid"])
async def test_fast_answer_is_the_ordinary_answer(world: World, name: str) -> None:
    addr = world.addrs[name]
    warm(world, addr)
    before = world.fast_answers
    fast, plain = world.both(get(addr, 7, cap=world.token))
    assert world.fast_answers == before + 1
    assert fast == plain
    frames = FrameDecoder().feed(fast)
    payload = b"".join(f.payload for f in frames)
    assert len(payload) == SIZES[name] and frames[-1].flags == Flags.RESP | Flags.END
    assert world.fast.golden() == world.plain.golden()


async def test_pipelined_requests_fast_until_the_first_that_is_not(world: World) -> None:
    small, large = world.addrs["small"], world.addrs["large"]
    warm(world, small)
    warm(world, large)
    cap = world.token
    batch = b"".join(
        [
            *(get(small, 1, cap=cap), get(small, 2, cap=cap), get(large, 3, cap=cap)),
            *(get(small, 4, cap=cap), HELLO, get(small, 6, cap=cap)),
        ]
    )
    before = world.fast_answers
    fast, plain = world.both(batch)
    assert fast == plain
    assert world.fast_answers == before + 2  # the large object hands the rest over
    assert [f.corr_id for f in FrameDecoder().feed(fast) if f.flags & Flags.END] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    assert world.fast.golden() == world.plain.golden()


async def test_quota_is_charged_alike_and_refused_by_the_ordinary_path(world: World) -> None:
    # A burst of 4, refilled far slower than the test runs.
    settings = dataclasses.replace(
        OmnigateConfig(), tls=False, storage_rps=0.01, burst_factor=400.0
    )
    for side in (world.fast, world.plain):
        side.gate.apply(settings)
    burst = 4
    addr = world.addrs["small"]
    codes = []
    before = world.fast_answers
    for corr in range(burst + 3):
        fast, plain = world.both(get(addr, corr + 1, cap=world.token))
        assert stable(fast) == stable(plain)
        codes.append(stable(fast)[-1][1])
    assert codes[:burst] == [0] * burst and set(codes[burst:]) == {429}
    # The first GET warmed the caches; the admitted ones after it were fast answers.
    assert world.fast_answers == before + burst - 1
    assert world.fast.golden() == world.plain.golden()


async def test_a_full_inflight_cap_is_the_ordinary_503(world: World) -> None:
    addr = world.addrs["small"]
    warm(world, addr)
    for side in (world.fast, world.plain):
        side.gate.inflight = side.gate.settings.max_inflight
    before = world.fast_answers
    fast, plain = world.both(get(addr, 3, cap=world.token))
    for side in (world.fast, world.plain):
        side.gate.inflight = 0
    assert stable(fast) == stable(plain) and stable(fast)[0][1] == 503
    assert world.fast_answers == before
    assert world.fast.golden() == world.plain.golden()


# --- left to the ordinary path ----------------------------------------------------------------


def _same_and_ordinary(w: World, data: bytes) -> list[tuple[int, int, int, int, bytes]]:
    before = w.fast_answers
    fast, plain = w.both(data)
    assert stable(fast) == stable(plain)
    assert w.fast_answers == before
    assert w.fast.golden() == w.plain.golden()
    return stable(fast)


async def test_an_object_not_yet_read_is_the_ordinary_paths(world: World) -> None:
    warm(world, world.addrs["small"])  # token verified, but this object never read
    frames = _same_and_ordinary(world, get(world.addrs["mid"], 2, cap=world.token))
    assert frames[-1][1] == 0


async def test_objects_over_one_frame_and_private_ones_are_the_ordinary_paths(
    world: World,
) -> None:
    for name in ("large", "private"):
        warm(world, world.addrs[name])
        frames = _same_and_ordinary(world, get(world.addrs[name], 2, cap=world.token))
        assert frames[-1][1] == 0
        assert sum(len(f[4]) for f in frames) == SIZES[name]


async def test_a_bad_or_missing_capability_is_the_ordinary_401(world: World) -> None:
    addr = world.addrs["small"]
    warm(world, addr)
    forged = bytearray(world.token)
    forged[-3] ^= 0x01
    for cap in (bytes(forged), b"", b"not a token"):
        frames = _same_and_ordinary(world, get(addr, 2, cap=cap))
        assert frames[0][1] == 401


async def test_a_revoked_token_is_401_at_once(world: World) -> None:
    addr = world.addrs["small"]
    token = world.mint()
    warm(world, addr, token)
    fast, _ = world.both(get(addr, 2, cap=token))
    assert stable(fast)[-1][1] == 0
    world.authority.revoke(Token.parse(token.decode()).token_id_hex)
    frames = _same_and_ordinary(world, get(addr, 3, cap=token))
    assert frames[0][1] == 401 and b"revoked" in frames[0][4]


async def test_an_expired_token_is_401(world: World) -> None:
    addr = world.addrs["small"]
    warm(world, addr)
    clock = world.fast.guard.verifier._clock
    expiring = world.mint(expires=int(clock()) + 86400)
    warm(world, addr, expiring)
    for side in (world.fast, world.plain):  # two days later
        side.guard.verifier._clock = lambda: clock() + 2 * 86400  # type: ignore[method-assign]
    frames = _same_and_ordinary(world, get(addr, 2, cap=expiring))
    assert frames[0][1] == 401 and b"expired" in frames[0][4]


async def test_a_token_of_a_rotated_out_key_is_401_once_its_overlap_ends(world: World) -> None:
    addr = world.addrs["small"]
    warm(world, addr)
    world.authority.rotate()
    for side in (world.fast, world.plain):
        side.guard.verifier.reconfigure(0.0)
    frames = _same_and_ordinary(world, get(addr, 2, cap=world.token))
    assert frames[0][1] == 401


async def test_a_token_for_another_object_is_the_ordinary_403(world: World) -> None:
    small, mid = world.addrs["small"], world.addrs["mid"]
    warm(world, small)
    only_mid = world.mint(addr=mid)
    warm(world, mid, only_mid)  # the token verified, its grant remembered
    frames = _same_and_ordinary(world, get(small, 2, cap=only_mid))
    assert frames[0][1] == 403


async def test_attenuated_token_still_allowing_it_is_fast(world: World) -> None:
    small = world.addrs["small"]
    narrow = Token.parse(world.token.decode()).attenuate(caveat("methods", "GET"))
    cap = narrow.serialize().encode()
    warm(world, small, cap)
    before = world.fast_answers
    fast, plain = world.both(get(small, 2, cap=cap))
    assert fast == plain and world.fast_answers == before + 1


async def test_a_payload_changed_after_it_was_kept_is_caught(world: World) -> None:
    addr = world.addrs["small"]
    warm(world, addr)
    reader = ContentReader(ObjectStore(world.data), world.data / "no-index.db", Metrics())
    path = reader.stat(parse_address(addr)).payload
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    st = path.stat()
    path.write_bytes(bytes(data))
    # Another mtime for certain: a write within the same clock tick could keep the old.
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    frames = _same_and_ordinary(world, get(addr, 2, cap=world.token))
    assert frames[0][1] == 500 and data[1:50] not in frames[0][4]


async def test_partial_frames_and_other_flags_are_the_ordinary_paths(world: World) -> None:
    addr = world.addrs["small"]
    warm(world, addr)
    whole = get(addr, 2, cap=world.token)
    assert _same_and_ordinary(world, whole[:20]) == []
    frames = _same_and_ordinary(world, whole[20:])
    assert frames[-1][1] == 0
    # START then END in two frames: the same GET, not a one-shot.
    payload = json.dumps({"op": "get", "addr": addr}).encode()
    start = Frame(
        Flags.REQ | Flags.START,
        app_proto_id=AppId.STORAGE,
        corr_id=3,
        cap=world.token,
        payload=payload,
    )
    end = Frame(Flags.REQ | Flags.END, app_proto_id=AppId.STORAGE, corr_id=3)
    frames = _same_and_ordinary(world, encode_frame(start) + encode_frame(end))
    assert frames[-1][1] == 0
    # A corr_id still busy with an open request: the ordinary path refuses the START.
    frames = _same_and_ordinary(world, encode_frame(start) + get(addr, 3, cap=world.token))
    assert frames[0][1] == 400


async def test_nothing_is_answered_on_the_spot_while_the_peer_is_not_reading(
    world: World,
) -> None:
    addr = world.addrs["small"]
    warm(world, addr)
    world.fast.proto.pause_writing()
    before = world.fast_answers
    world.fast.proto.data_received(get(addr, 2, cap=world.token))
    assert world.fast_answers == before
    world.fast.proto.resume_writing()
