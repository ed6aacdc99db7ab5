"""``python -m support.node_main --spec NAME=module:Class ... [ron up flags]``.

Runs the real kernel (``run_node``) over the given test services, as ``ron up`` does
over the built-in ones, so signal and exit behaviour can be tested in a real process.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import uvloop

from ron.kernel.node import ConfigSource, run_node
from ron.kernel.spec import ServiceSpec
from ron.logs import setup_logging


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--spec", action="append", default=[])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--admin", default="127.0.0.1:0")
    p.add_argument("--config")
    ns = p.parse_args()
    specs = []
    for item in ns.spec:
        name, _, target = item.partition("=")
        specs.append(ServiceSpec(name=name, target=target, required=True))
    flags = {"data_dir": ns.data_dir, "admin": ns.admin}
    source = ConfigSource(
        file=None if ns.config is None else Path(ns.config), env=dict(os.environ), flags=flags
    )
    config = source.load()
    setup_logging(config.log_level)
    return uvloop.run(run_node(config, specs, source=source))


if __name__ == "__main__":
    sys.exit(main())
