"""The node the red-team suite (``tests/redteam``) attacks: its config and its limits.

One node serves every red-team module (started once, in ``tests/redteam/conftest.py``):
starting a node costs seconds on a small machine, and the attacks are built not to
interfere (each module checks that the node is back to its resting state after each
case). Limits are configured small or short so that crossing them is cheap and quick:

- omnigate: ``max_frame`` 128 KiB (the COMP rails, 8 x max_frame, cross at 1 MiB), idle
  deadline 1 s, and ``max_inflight`` above ``max_streams`` (128, the default), so that
  one connection at its stream limit leaves slots for everyone else;
- gateway: headers within 0.5 s, body chunks within 1 s, bodies (decoded too) up to
  1 MiB; the anonymous and the abusive tenants get 2 requests/s (burst 4), the
  well-behaved tenant (``GOOD_KEY``) far more than any case sends.
"""

from __future__ import annotations

from typing import Any

MAX_FRAME = 128 * 1024
IDLE_S = 1.0
OAP_STORAGE_RPS = 20.0  # burst 40 (burst_factor 2)
HEADER_TIMEOUT_S = 0.5
READ_IDLE_S = 1.0
MAX_PUT = 1024 * 1024
ANON_RPS = 2.0
ANON_BURST = 4.0
MEMORY_BOUND_KIB = 64 * 1024
"""How much a service's resident memory may grow across one attack: generous, because
allocators keep freed memory, yet far below what any bomb or flood announces."""

OBJECT = b"red team reference object\n" * 10
"""Stored before any attack; every module checks it is still served, byte for byte."""

GOOD_KEY = "redteam-good-tenant-0123456789"
ABUSER_KEYS = tuple(f"redteam-abuser-{i:02d}-0123456789" for i in range(20))


def _tenants() -> str:
    lines = [f'[gateway.tenants.good]\napi_keys = ["{GOOD_KEY}"]\nrps = 100000\nburst = 100000\n']
    lines += [
        f'[gateway.tenants.abuser{i:02d}]\napi_keys = ["{key}"]\n'
        for i, key in enumerate(ABUSER_KEYS)
    ]
    return "\n".join(lines)


CONFIG = f"""
[gateway]
max_put_bytes = {MAX_PUT}
max_decoded_bytes = {MAX_PUT}
header_timeout_s = {HEADER_TIMEOUT_S}
read_idle_timeout_s = {READ_IDLE_S}

[gateway.quota]
rps = {ANON_RPS}
burst = {ANON_BURST}

{_tenants()}
[omnigate]
max_frame = {MAX_FRAME}
idle_timeout_s = {IDLE_S}
max_inflight = 256
storage_rps = {OAP_STORAGE_RPS}
"""


_good: dict[str, str] = {}


def good_auth(node: Any) -> dict[str, str]:
    """Credentials of the well-behaved tenant: a token naming tenant ``good`` (its
    configured quota applies to the token's tenant), minted once per node."""
    key = str(node.data_dir)
    if key not in _good:
        _good[key] = node.mint("good")
    return {"Authorization": f"Bearer {_good[key]}"}
