"""The services a node runs, in dependency order.

Each issue that adds a service adds its spec here; ``services = [...]`` in the config
picks a subset (an empty list means all of them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from ron.kernel.config import Config, ConfigError
from ron.kernel.spec import ServiceSpec

BUILTIN_SPECS: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        name="index",
        target="ron.services.index.service:IndexService",
        client="ron.services.index.service:IndexClient",
    ),
    ServiceSpec(
        name="storage",
        target="ron.services.storage.service:StorageService",
        client="ron.services.storage.service:StorageClient",
    ),
    ServiceSpec(
        name="overlay",
        target="ron.services.overlay.service:OverlayService",
        client="ron.services.overlay.service:OverlayClient",
        depends=("index", "storage"),
    ),
    ServiceSpec(
        name="mailbox",
        target="ron.services.mailbox.service:MailboxService",
        client="ron.services.mailbox.service:MailboxClient",
    ),
    ServiceSpec(
        name="gateway",
        target="ron.services.gateway.service:GatewayService",
        listeners=("http",),
        depends=("overlay",),
    ),
    ServiceSpec(
        name="omnigate",
        target="ron.services.omnigate.service:OmnigateService",
        listeners=("oap",),
        depends=("overlay",),
    ),
)


def specs_for(config: Config) -> list[ServiceSpec]:
    """The specs ``config.services`` selects, keeping dependency order, with one spec per
    gateway and omnigate worker (``gateway``, ``gateway-2``...): workers of a service
    share its listening socket."""
    return _expand_workers(_select(config), worker_counts(config))


def worker_counts(config: Config) -> dict[str, int]:
    """How many worker processes each multi-worker service runs."""
    gateway = config.gateway
    # One event loop gains nothing from a second gateway in it: "auto" means one there.
    gateway_workers = 1 if config.single_process and not gateway.workers else gateway.worker_count
    return {"gateway": gateway_workers, "omnigate": config.omnigate.workers}


def _expand_workers(specs: list[ServiceSpec], workers: Mapping[str, int]) -> list[ServiceSpec]:
    out: list[ServiceSpec] = []
    for spec in specs:
        out.append(spec)
        count = workers.get(spec.name, 1)
        out.extend(replace(spec, name=f"{spec.name}-{i}") for i in range(2, count + 1))
    return out


def _select(config: Config) -> list[ServiceSpec]:
    if not config.services:
        return list(BUILTIN_SPECS)
    known = {s.name: s for s in BUILTIN_SPECS}
    unknown = [n for n in config.services if n not in known]
    if unknown:
        raise ConfigError(f"unknown service {unknown[0]!r}; known: {', '.join(known)}")
    chosen = [s for s in BUILTIN_SPECS if s.name in config.services]
    names = {s.name for s in chosen}
    for spec in chosen:
        missing = [d for d in spec.depends if d not in names]
        if missing:
            raise ConfigError(f"service {spec.name!r} needs {missing[0]!r}")
    return chosen


def worker_slot(name: str) -> int:
    """``gateway`` is worker slot 0, ``gateway-2`` slot 1, and so on (any service)."""
    _, _, number = name.rpartition("-")
    return int(number) - 1 if number.isdigit() else 0
