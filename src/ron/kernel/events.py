"""KernelEvent: the four things the kernel tells every part of the node.

The JSON shapes are a wire contract (REFERENCE §7) shared with tools and other
implementations, so they are written out by hand rather than derived from class
names: ``{"Health":{"service":"svc","ok":true}}``, ``{"ConfigUpdated":{"version":42}}``,
``{"ServiceCrashed":{"service":"svc","reason":"boom"}}`` and ``"Shutdown"``.

The variants hang off :class:`KernelEvent` (``KernelEvent.Health(...)``) so that the
kernel's public surface stays exactly six names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar


class KernelEvent:
    """Base of the four event variants; use :meth:`from_json` to decode any of them."""

    __slots__ = ()
    kind: ClassVar[str] = ""

    Health: ClassVar[type[_Health]]
    ConfigUpdated: ClassVar[type[_ConfigUpdated]]
    ServiceCrashed: ClassVar[type[_ServiceCrashed]]
    Shutdown: ClassVar[type[_Shutdown]]

    def to_obj(self) -> Any:
        """The JSON-ready value (a dict, or the string ``"Shutdown"``)."""
        raise NotImplementedError

    def to_json(self) -> str:
        return json.dumps(self.to_obj(), separators=(",", ":"))

    @staticmethod
    def from_obj(obj: Any) -> KernelEvent:
        """Decode a JSON value; raises ValueError for anything but the four shapes."""
        if obj == "Shutdown":
            return _Shutdown()
        if not isinstance(obj, dict) or len(obj) != 1:
            raise ValueError(f"not a KernelEvent: {obj!r:.200}")
        (kind, body), *_ = obj.items()
        if not isinstance(body, dict):
            raise ValueError(f"KernelEvent {kind!r} body must be an object")
        if kind == "Health" and set(body) == {"service", "ok"}:
            if isinstance(body["service"], str) and isinstance(body["ok"], bool):
                return _Health(body["service"], body["ok"])
        elif kind == "ConfigUpdated" and set(body) == {"version"}:
            version = body["version"]
            if isinstance(version, int) and not isinstance(version, bool) and version >= 0:
                return _ConfigUpdated(version)
        elif kind == "ServiceCrashed" and set(body) == {"service", "reason"}:  # noqa: SIM102
            if isinstance(body["service"], str) and isinstance(body["reason"], str):
                return _ServiceCrashed(body["service"], body["reason"])
        raise ValueError(f"not a KernelEvent: {obj!r:.200}")

    @staticmethod
    def from_json(text: str | bytes) -> KernelEvent:
        return KernelEvent.from_obj(json.loads(text))


@dataclass(frozen=True, slots=True)
class _Health(KernelEvent):
    """A service's health changed (or was re-confirmed)."""

    service: str
    ok: bool
    kind: ClassVar[str] = "Health"

    def to_obj(self) -> Any:
        return {"Health": {"service": self.service, "ok": self.ok}}


@dataclass(frozen=True, slots=True)
class _ConfigUpdated(KernelEvent):
    """A validated config snapshot is now in force."""

    version: int
    kind: ClassVar[str] = "ConfigUpdated"

    def to_obj(self) -> Any:
        return {"ConfigUpdated": {"version": self.version}}


@dataclass(frozen=True, slots=True)
class _ServiceCrashed(KernelEvent):
    """A service process died (or the bus lost events: service ``bus-overflow``)."""

    service: str
    reason: str
    kind: ClassVar[str] = "ServiceCrashed"

    def to_obj(self) -> Any:
        return {"ServiceCrashed": {"service": self.service, "reason": self.reason}}


@dataclass(frozen=True, slots=True)
class _Shutdown(KernelEvent):
    """The node is stopping; services should finish in-flight work and exit."""

    kind: ClassVar[str] = "Shutdown"

    def to_obj(self) -> Any:
        return "Shutdown"


for _cls in (_Health, _ConfigUpdated, _ServiceCrashed, _Shutdown):
    _cls.__name__ = _cls.__qualname__ = f"KernelEvent.{_cls.kind}"
KernelEvent.Health = _Health
KernelEvent.ConfigUpdated = _ConfigUpdated
KernelEvent.ServiceCrashed = _ServiceCrashed
KernelEvent.Shutdown = _Shutdown
