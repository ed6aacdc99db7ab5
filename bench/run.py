"""``make bench``: run every ``bench/bench_*.py`` (or the ones named) and save the results.

Each module exposes ``run(report: Report) -> None``. Results go to
``bench/results/latest.json``; every figure and ratio is also printed on its own line.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import Report  # noqa: E402


def main(argv: list[str]) -> int:
    names = argv or sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    report = Report()
    failed = []
    for name in names:
        path = HERE / f"bench_{name}.py"
        print(f"== {name}", flush=True)
        spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # so child processes can pickle its functions
        try:
            spec.loader.exec_module(module)
            module.run(report)
        except Exception:
            traceback.print_exc()
            failed.append(name)
    report.save(HERE / "results" / "latest.json")
    print(f"saved {HERE / 'results' / 'latest.json'}")
    if failed:
        print(f"benchmarks that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
