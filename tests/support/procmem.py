"""Memory of a running process as the kernel accounts it (``/proc/<pid>/status``).

Hostile-input tests assert that memory stays bounded: a bomb, a flood or a parked
stream must cost a service at most a fixed amount, never what the attacker announced.
"""

from __future__ import annotations

from pathlib import Path


def vm_kib(pid: int, field: str = "VmRSS") -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (resident peak) of ``pid``, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")
