"""Replay every fuzz seed corpus through its fuzz target's own checks.

Each corpus holds valid inputs, near-valid malformed ones and every crash input ever
fixed; replaying them in ``make test`` keeps fixed bugs fixed without needing atheris.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

FUZZ = Path(__file__).resolve().parents[1] / "fuzz"
CORPORA = FUZZ / "corpus"

# Corpus (and ``make fuzz FUZZ=<name>``) name -> harness module in tests/fuzz/.
HARNESSES = {
    "oap": "fuzz_oap_decoder",
    "ipc": "fuzz_ipc_decoder",
    "address": "fuzz_address",
    "range": "fuzz_range",
    "manifest": "fuzz_manifest",
}


def _load(module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, FUZZ / f"{module_name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODULES = {name: _load(module_name) for name, module_name in HARNESSES.items()}
SEEDS = [(name, seed) for name in HARNESSES for seed in sorted((CORPORA / name).iterdir())]
# The OAP corpus mixes spec vectors that decode to errors with ones that do not, so only
# the other corpora promise that a seed's prefix says whether the parser accepts it.
CLASSIFIED = [(name, seed) for name, seed in SEEDS if hasattr(MODULES[name], "accepts")]


def _seed_id(value: object) -> str:
    return value.name if isinstance(value, Path) else str(value)


def test_every_harness_has_a_corpus_and_is_replayed() -> None:
    assert {path.stem for path in FUZZ.glob("fuzz_*.py")} == set(HARNESSES.values())
    assert {path.name for path in CORPORA.iterdir()} == set(HARNESSES)


@pytest.mark.parametrize("name", HARNESSES)
def test_each_corpus_has_valid_and_malformed_seeds(name: str) -> None:
    names = [seed.name for seed in (CORPORA / name).iterdir()]
    assert any(n.startswith(("vector-", "valid-")) for n in names)
    assert any(n.startswith("malformed-") for n in names)
    assert all(n.startswith(("vector-", "valid-", "malformed-")) for n in names)


@pytest.mark.parametrize(("name", "seed"), SEEDS, ids=_seed_id)
def test_seed_keeps_the_harness_contract(name: str, seed: Path) -> None:
    one_input: Callable[[bytes], None] = MODULES[name].one_input
    one_input(seed.read_bytes())


@pytest.mark.parametrize(("name", "seed"), CLASSIFIED, ids=_seed_id)
def test_valid_seeds_are_accepted_and_malformed_seeds_refused(name: str, seed: Path) -> None:
    accepts: Callable[[bytes], bool] = MODULES[name].accepts
    assert accepts(seed.read_bytes()) is seed.name.startswith("valid-")
