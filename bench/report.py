"""What every benchmark reports: figures and ratios against baselines from the same run.

Absolute numbers drift by tens of percent on shared machines, so every claim is a
ratio of two figures measured back to back; both figures are printed too.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Report:
    """Collects figures and ratios; printed as it goes, saved as JSON at the end."""

    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    ratios: dict[str, dict[str, Any]] = field(default_factory=dict)

    def figure(self, name: str, value: float, unit: str) -> None:
        self.figures[name] = {"value": round(value, 3), "unit": unit}
        print(f"{name}: {value:,.1f} {unit}", flush=True)

    def ratio(self, name: str, ours: float, baseline: float, target: float | None = None) -> float:
        """Record ours/baseline (higher is better); ``target`` is the goal ratio, if any."""
        value = ours / baseline if baseline else 0.0
        met = None if target is None else value >= target
        self.ratios[name] = {"value": round(value, 3), "target": target, "met": met}
        goal = "" if target is None else f" (target >= {target}: {'met' if met else 'NOT met'})"
        print(f"{name}: {value:.2f}x{goal}", flush=True)
        return value

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": _cpus(), "python": platform.python_version()},
            "figures": self.figures,
            "ratios": self.ratios,
        }
        path.write_text(json.dumps(data, indent=2) + "\n")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))
