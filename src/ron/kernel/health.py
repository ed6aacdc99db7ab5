"""HealthState: what /healthz and /readyz answer.

Liveness (``/healthz``) only says the kernel's loop is running, so an orchestrator never
restarts a node that is merely waiting for a dependency. Readiness (``/readyz``) is the
strict question "should traffic come here now": config loaded, every required service
healthy, not draining; when the answer is no it names what is missing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ServiceHealth:
    """The last known state of one service."""

    ok: bool = False
    required: bool = True
    detail: str = "starting"
    since: float = field(default_factory=time.time)


class HealthState:
    """Thread-safe record of service health, config state and draining."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._services: dict[str, ServiceHealth] = {}
        self._config_loaded = False
        self._draining = False
        self._degraded: dict[str, str] = {}

    def register(self, service: str, *, required: bool = True) -> None:
        with self._lock:
            self._services.setdefault(service, ServiceHealth(required=required))

    def set(self, service: str, ok: bool, detail: str = "") -> bool:
        """Record a service's health; returns True when ``ok`` changed."""
        with self._lock:
            current = self._services.setdefault(service, ServiceHealth())
            changed = current.ok != ok
            if changed or detail != current.detail:
                current.ok = ok
                current.detail = detail or ("ok" if ok else "down")
                if changed:
                    current.since = time.time()
            return changed

    def set_config_loaded(self, loaded: bool = True) -> None:
        with self._lock:
            self._config_loaded = loaded

    def set_draining(self, draining: bool = True) -> None:
        with self._lock:
            self._draining = draining

    @property
    def draining(self) -> bool:
        return self._draining

    def set_degraded(self, reason: str, detail: str | None) -> None:
        """Mark (detail given) or clear (None) a degradation that keeps reads open."""
        with self._lock:
            if detail is None:
                self._degraded.pop(reason, None)
            else:
                self._degraded[reason] = detail

    def service(self, name: str) -> ServiceHealth | None:
        with self._lock:
            return self._services.get(name)

    def missing(self) -> list[str]:
        """Why the node is not ready; empty when it is."""
        with self._lock:
            why: list[str] = []
            if self._draining:
                why.append("draining")
            if not self._config_loaded:
                why.append("config")
            why.extend(
                f"service:{name}"
                for name, h in sorted(self._services.items())
                if h.required and not h.ok
            )
            why.extend(f"degraded:{name}" for name in sorted(self._degraded))
            return why

    def ready(self) -> bool:
        return not self.missing()

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready view used by /healthz, /readyz and ``ron status``."""
        with self._lock:
            services = {
                name: {"ok": h.ok, "required": h.required, "detail": h.detail, "since": h.since}
                for name, h in sorted(self._services.items())
            }
            degraded = dict(self._degraded)
        missing = self.missing()
        return {
            "ready": not missing,
            "missing": missing,
            "degraded": degraded,
            "services": services,
        }
