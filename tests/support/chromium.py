"""Headless Chromium for browser tests: Debian's ``chromium`` package, installed on demand.

The browser test must not silently skip on a machine without a browser: it installs
the distribution package with apt-get (the one-time cost is outside the test budget)
and fails with a clear message when that is impossible.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
INSTALL_TIMEOUT_S = 1200


class ChromiumUnavailable(RuntimeError):
    """Chromium is missing and could not be installed."""


def ensure_chromium() -> Path:
    """The path of Debian's chromium, installing the package first when it is missing."""
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None:
        raise ChromiumUnavailable(f"{CHROMIUM} is missing and apt-get is not available")
    if os.geteuid() != 0:
        raise ChromiumUnavailable(
            f"{CHROMIUM} is missing; install it with `apt-get install chromium` (needs root)"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
    ):
        try:
            done = subprocess.run(
                args, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ChromiumUnavailable(f"`{' '.join(args)}` failed: {exc}") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout)[-2000:]
            raise ChromiumUnavailable(
                f"`{' '.join(args)}` exited with {done.returncode}; chromium cannot be "
                f"installed on this machine:\n{tail}"
            )
    if not CHROMIUM.exists():
        raise ChromiumUnavailable(f"apt-get installed chromium but {CHROMIUM} is still missing")
    return CHROMIUM
