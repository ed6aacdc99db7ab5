"""The RustyOnions microkernel: bus, events, metrics, health, config, signals.

The public surface is deliberately these six names; the supervisor, admin server and
node wiring live in submodules that the ``ron`` command uses.
"""

from ron.kernel.bus import Bus
from ron.kernel.config import Config
from ron.kernel.events import KernelEvent
from ron.kernel.health import HealthState
from ron.kernel.metrics import Metrics
from ron.kernel.signals import wait_for_ctrl_c

__all__ = ["Bus", "Config", "HealthState", "KernelEvent", "Metrics", "wait_for_ctrl_c"]
