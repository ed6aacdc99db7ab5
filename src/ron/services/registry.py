"""The services a node runs, in dependency order.

Each issue that adds a service adds its spec here; ``services = [...]`` in the config
picks a subset (an empty list means all of them).
"""

from __future__ import annotations

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
        name="gateway",
        target="ron.services.gateway.service:GatewayService",
        listeners=("http",),
        depends=("overlay",),
    ),
)


def specs_for(config: Config) -> list[ServiceSpec]:
    """The specs ``config.services`` selects, keeping dependency order."""
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
