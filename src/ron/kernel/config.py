"""Config: one typed, validated snapshot built from defaults, a TOML file, ``RON_*``
environment variables and command-line flags (in that order of precedence).

Built once and passed down; no module reads ``os.environ`` on its own. A reload builds
a whole new snapshot and validates it before anything sees it, so an invalid edit can
never leave the node half-configured: the previous snapshot stays in force.

Environment names: ``RON_<KEY>`` for top-level keys (``RON_DATA_DIR``, ``RON_HTTP``) and
``RON_<SECTION>__<KEY>`` for keys in a section (``RON_SUPERVISOR__MAX_RESTARTS``).
``RON_CONFIG`` names the file. Unknown keys in the file are errors (typos must not be
silently ignored); unknown ``RON_*`` variables are ignored because clients use some too.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_SERVICES: tuple[str, ...] = ()
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the problem."""


def parse_hostport(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` or ``[V6]:PORT``; port 0 means "pick a free port"."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ConfigError(f"{text!r}: bad IPv6 address") from exc
    elif ":" in host:
        raise ConfigError(f"{text!r}: write IPv6 hosts in brackets")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{text!r}: port must be 0-65535")
    return host, int(port_text)


@dataclass(frozen=True)
class KernelConfig:
    """The kernel's own knobs."""

    bus_capacity: int = 4096
    drain_timeout_s: float = 10.0
    reload_poll_s: float = 1.0

    def __post_init__(self) -> None:
        _positive("kernel.bus_capacity", self.bus_capacity)
        _positive("kernel.drain_timeout_s", self.drain_timeout_s)
        _positive("kernel.reload_poll_s", self.reload_poll_s)


@dataclass(frozen=True)
class SupervisorConfig:
    """Restart policy: exponential backoff with jitter, then quarantine."""

    backoff_initial_s: float = 0.1
    backoff_max_s: float = 30.0
    max_restarts: int = 5
    restart_window_s: float = 60.0
    health_interval_s: float = 1.0
    start_timeout_s: float = 20.0
    stop_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        _positive("supervisor.backoff_initial_s", self.backoff_initial_s)
        _positive("supervisor.restart_window_s", self.restart_window_s)
        _positive("supervisor.health_interval_s", self.health_interval_s)
        _positive("supervisor.start_timeout_s", self.start_timeout_s)
        _positive("supervisor.stop_timeout_s", self.stop_timeout_s)
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError("supervisor.backoff_max_s must be >= backoff_initial_s")
        if self.max_restarts < 0:
            raise ConfigError("supervisor.max_restarts must be >= 0")


@dataclass(frozen=True)
class QuotaConfig:
    """Token buckets per tenant: requests/s and bytes/s, each with a burst."""

    enabled: bool = True
    rps: float = 200.0
    burst: float = 400.0
    bytes_per_s: float = 64 * 1024 * 1024
    bytes_burst: float = 128 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("rps", "burst", "bytes_per_s", "bytes_burst"):
            _positive(f"quota.{name}", getattr(self, name))


@dataclass(frozen=True)
class TenantConfig:
    """A named tenant: the API keys that select it and optional quota overrides."""

    api_keys: tuple[str, ...] = ()
    rps: float | None = None
    burst: float | None = None
    bytes_per_s: float | None = None
    bytes_burst: float | None = None

    def __post_init__(self) -> None:
        for name in ("rps", "burst", "bytes_per_s", "bytes_burst"):
            value = getattr(self, name)
            if value is not None:
                _positive(f"tenant {name}", value)
        if any(len(k) < 16 for k in self.api_keys):
            raise ConfigError("tenant api_keys must be at least 16 characters")


AUTO_WORKERS_MAX = 4


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, as taskset or a cpuset
    set it), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class GatewayConfig:
    """The HTTP gateway's knobs."""

    enforce_payments: bool = False
    max_put_bytes: int = 1 << 30
    keepalive_s: float = 15.0
    workers: int = 0  # 0: one per usable CPU core, at most AUTO_WORKERS_MAX
    max_inflight: int = 512
    degraded_ratio: float = 0.9
    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 2.0
    read_idle_timeout_s: float = 15.0
    write_timeout_s: float = 10.0
    max_decoded_bytes: int = 8 * 1024 * 1024
    max_decode_ratio: float = 10.0
    request_metrics: bool = True
    quota: QuotaConfig = field(default_factory=QuotaConfig)
    tenants: dict[str, TenantConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive("gateway.max_put_bytes", self.max_put_bytes)
        _positive("gateway.keepalive_s", self.keepalive_s)
        _positive("gateway.max_inflight", self.max_inflight)
        _positive("gateway.max_header_bytes", self.max_header_bytes)
        _positive("gateway.header_timeout_s", self.header_timeout_s)
        _positive("gateway.read_idle_timeout_s", self.read_idle_timeout_s)
        _positive("gateway.write_timeout_s", self.write_timeout_s)
        _positive("gateway.max_decoded_bytes", self.max_decoded_bytes)
        _positive("gateway.max_decode_ratio", self.max_decode_ratio)
        if not 0 <= self.workers <= 32:
            raise ConfigError("gateway.workers must be 0 (one per CPU core) or 1-32")
        if not 0 < self.degraded_ratio <= 1:
            raise ConfigError("gateway.degraded_ratio must be in (0, 1]")
        seen: set[str] = set()
        for tenant in self.tenants.values():
            for key in tenant.api_keys:
                if key in seen:
                    raise ConfigError("an api key is listed for two tenants")
                seen.add(key)

    @property
    def worker_count(self) -> int:
        """Gateway processes to run: ``workers``, or with 0 one per usable core (at most
        AUTO_WORKERS_MAX), as nginx's ``worker_processes auto``. One Python process
        serves one core; a second lets small GETs use the other (docs/PERFORMANCE.md)."""
        if self.workers:
            return self.workers
        return max(1, min(AUTO_WORKERS_MAX, usable_cpus()))


@dataclass(frozen=True)
class OmnigateConfig:
    """The OAP/1 server's knobs (docs/specs/OAP-1.md §16).

    ``tls`` and the certificate paths apply when the service starts; everything else
    follows a config reload. Unset certificate paths mean the development CA and server
    certificate generated under ``<data_dir>/tls/`` on first start.
    """

    tls: bool = True
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    max_frame: int = 1_048_576
    # Twice max_streams, so that one connection at its stream limit cannot hold every
    # slot; max_stream_bytes bounds what an unfinished request may buffer (the largest
    # request any application takes, a mailbox batch, is about 1.5 MiB as JSON).
    max_inflight: int = 256
    max_streams: int = 128
    max_stream_frames: int = 4096
    max_stream_bytes: int = 4 * 1024 * 1024
    storage_rps: float = 50.0
    mailbox_rps: float = 100.0
    burst_factor: float = 2.0
    quota_table_size: int = 65_536
    handshake_timeout_s: float = 2.0
    idle_timeout_s: float = 15.0
    write_timeout_s: float = 10.0
    tiles_root: Path | None = None
    workers: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= 32:
            raise ConfigError("omnigate.workers must be 1-32")
        if not 33 <= self.max_frame <= 0xFFFF_FFFF:
            raise ConfigError("omnigate.max_frame must be within 33..4294967295")
        for name in (
            "max_inflight",
            "max_streams",
            "max_stream_frames",
            "max_stream_bytes",
            "storage_rps",
            "mailbox_rps",
            "quota_table_size",
            "handshake_timeout_s",
            "idle_timeout_s",
            "write_timeout_s",
        ):
            _positive(f"omnigate.{name}", getattr(self, name))
        if self.burst_factor < 1:
            raise ConfigError("omnigate.burst_factor must be >= 1")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("omnigate.cert_file and omnigate.key_file go together")


MAILBOX_TOPIC_RE = r"[A-Za-z0-9._-]{1,128}"
MAILBOX_HARD_MAX_PAYLOAD = 1 << 20  # one IPC frame / one OAP frame carries a whole message
MAILBOX_SYNC_MODES = ("normal", "full")


@dataclass(frozen=True)
class MailboxConfig:
    """The mailbox service's knobs (docs/specs/HTTP-API.md, REFERENCE §6)."""

    db: Path | None = None
    in_memory: bool = False
    synchronous: str = "normal"
    max_payload_bytes: int = MAILBOX_HARD_MAX_PAYLOAD
    dedup_window_s: float = 300.0
    max_deliveries: int = 5
    max_deliveries_by_topic: dict[str, int] = field(default_factory=dict)
    default_visibility_s: float = 30.0
    max_visibility_s: float = 43200.0
    max_wait_s: float = 20.0
    max_waiters: int = 128
    subscribe_max_unacked: int = 10
    # Front ends (gateway workers, OAP servers) serve send, receive (what is there now),
    # ack, nack and extend against the file themselves instead of through the mailbox
    # process (a hop less).
    attach: bool = True

    def __post_init__(self) -> None:
        import re

        if self.synchronous not in MAILBOX_SYNC_MODES:
            raise ConfigError("mailbox.synchronous must be normal or full")
        if not 0 < self.max_payload_bytes <= MAILBOX_HARD_MAX_PAYLOAD:
            raise ConfigError(f"mailbox.max_payload_bytes must be 1..{MAILBOX_HARD_MAX_PAYLOAD}")
        _positive("mailbox.dedup_window_s", self.dedup_window_s)
        _positive("mailbox.default_visibility_s", self.default_visibility_s)
        _positive("mailbox.max_visibility_s", self.max_visibility_s)
        if self.default_visibility_s > self.max_visibility_s:
            raise ConfigError("mailbox.default_visibility_s must be <= max_visibility_s")
        if not 0 <= self.max_wait_s <= 20:
            raise ConfigError("mailbox.max_wait_s must be 0..20")
        if not 1 <= self.max_waiters <= 200:
            raise ConfigError("mailbox.max_waiters must be 1..200")
        if not 1 <= self.subscribe_max_unacked <= 100:
            raise ConfigError("mailbox.subscribe_max_unacked must be 1..100")
        if self.max_deliveries < 1:
            raise ConfigError("mailbox.max_deliveries must be >= 1")
        for topic, limit in self.max_deliveries_by_topic.items():
            if not re.fullmatch(MAILBOX_TOPIC_RE, topic):
                raise ConfigError(f"mailbox.max_deliveries_by_topic: bad topic {topic!r}")
            if limit < 1:
                raise ConfigError(f"mailbox.max_deliveries_by_topic.{topic} must be >= 1")

    def max_deliveries_for(self, topic: str) -> int:
        return self.max_deliveries_by_topic.get(topic, self.max_deliveries)


CAPS_MAX_OVERLAP_S = 30 * 86400.0


@dataclass(frozen=True)
class CapsConfig:
    """Capability tokens (docs/specs/CAPABILITIES.md).

    ``rotation_overlap_s`` is how long tokens minted under a rotated-out root key keep
    working after ``ron cap rotate``; it is read at verification time, so lowering it
    (even to 0) and reloading cuts off a compromised key's tokens without a restart.

    ``enforce`` makes writes, mailbox operations and OAP requests need a valid token
    (401 without one). Turned off, they are served as the anonymous tenant: only for a
    node nobody else can reach.
    """

    rotation_overlap_s: float = 7 * 86400.0
    enforce: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.rotation_overlap_s <= CAPS_MAX_OVERLAP_S:
            raise ConfigError("caps.rotation_overlap_s must be 0..2592000 (30 days)")


@dataclass(frozen=True)
class Config:
    """The whole node's configuration; sections are nested frozen dataclasses."""

    data_dir: Path = Path(".ron")
    index_db: Path | None = None
    admin: str = "127.0.0.1:9096"
    http: str = "127.0.0.1:8080"
    oap: str = "127.0.0.1:9443"
    single_process: bool = False
    amnesia: bool = False
    log_level: str = "info"
    services: tuple[str, ...] = DEFAULT_SERVICES
    kernel: KernelConfig = field(default_factory=KernelConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    mailbox: MailboxConfig = field(default_factory=MailboxConfig)
    omnigate: OmnigateConfig = field(default_factory=OmnigateConfig)
    caps: CapsConfig = field(default_factory=CapsConfig)

    def __post_init__(self) -> None:
        parse_hostport(self.admin)
        parse_hostport(self.http)
        parse_hostport(self.oap)
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        if len(set(self.services)) != len(self.services):
            raise ConfigError("services lists a service twice")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, used to hand a snapshot to service processes."""
        plain: dict[str, Any] = _to_plain(dataclasses.asdict(self))
        return plain

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        return _build(cls, data, "")


def load_config(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Build and validate a snapshot; raises ConfigError with the offending key."""
    env = env or {}
    merged: dict[str, Any] = {}
    if file is None and env.get("RON_CONFIG"):
        file = Path(env["RON_CONFIG"])
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from exc
        try:
            merged = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: {exc}") from exc
    _deep_update(merged, _from_env(Config, env))
    _deep_update(merged, dict(flags or {}))
    return _build(Config, merged, "")


# --- typed building ---------------------------------------------------------------

T = TypeVar("T")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_NONE = frozenset({"", "none", "off"})


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0")


def _deep_update(target: dict[str, Any], source: Mapping[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _from_env(cls: type, env: Mapping[str, str], prefix: str = "RON_") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        hint = _hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            sub = _from_env(typing.cast(type, hint), env, f"{prefix}{f.name.upper()}__")
            if sub:
                out[f.name] = sub
        elif (value := env.get(f"{prefix}{f.name.upper()}")) is not None:
            out[f.name] = value
    return out


def _build(cls: type[T], data: Mapping[str, Any], where: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'} must be a table")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key {where}{unknown[0]}")
    kwargs = {name: _coerce(hints[name], value, f"{where}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(typing.cast(type, hint), value, f"{key}.")
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable = len(args) != len(typing.get_args(hint))
        if nullable and (value is None or (isinstance(value, str) and value.lower() in _NONE)):
            return None
        return _coerce(args[0], value, key)
    if origin is tuple:
        (item,) = typing.get_args(hint)[:1]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list")
        return tuple(_coerce(item, v, key) for v in value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a table")
        _, vtype = typing.get_args(hint)
        return {str(k): _coerce(vtype, v, f"{key}.{k}") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{key} must be true or false")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer")
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{key} must be an integer") from exc
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number")
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{key} must be a number") from exc
    if hint is Path:
        if not isinstance(value, str | Path) or not str(value):
            raise ConfigError(f"{key} must be a path")
        return Path(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string")
        return value
    return value
