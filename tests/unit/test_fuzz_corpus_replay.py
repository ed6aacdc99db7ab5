"""Replay the OAP/1 fuzz seed corpus through the fuzz target's own checks.

The corpus holds the spec vectors plus malformed seeds and every crash input ever fixed;
replaying them in ``make test`` keeps fixed bugs fixed without needing atheris.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
CORPUS = FUZZ / "corpus" / "oap"


def _load_target() -> Callable[[bytes], None]:
    spec = importlib.util.spec_from_file_location("fuzz_oap_decoder", FUZZ / "fuzz_oap_decoder.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    target: Callable[[bytes], None] = module.one_input
    return target


ONE_INPUT = _load_target()
SEEDS = sorted(CORPUS.iterdir())


def test_the_corpus_has_vectors_and_malformed_seeds() -> None:
    names = [seed.name for seed in SEEDS]
    assert any(name.startswith("vector-") for name in names)
    assert any(name.startswith("malformed-") for name in names)


@pytest.mark.parametrize("seed", SEEDS, ids=lambda path: path.name)
def test_seed_yields_frames_or_oap_errors_only(seed: Path) -> None:
    ONE_INPUT(seed.read_bytes())
