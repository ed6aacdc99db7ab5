# Two commands on a fresh machine: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench fuzz soak chaos clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/ron up $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .ron .pytest_cache .mypy_cache .ruff_cache

# Benchmarks print ratios against baselines measured in the same run (BENCH=name to pick).
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH)

# Fuzzing campaigns are long: never part of `make test` (which replays the corpus).
FUZZ_SECONDS ?= 300
fuzz: $(STAMP)
	$(BIN)/python -m pip install -q atheris==3.0.0
	mkdir -p .fuzz/oap
	$(BIN)/python tests/fuzz/fuzz_oap_decoder.py .fuzz/oap tests/fuzz/corpus/oap -max_total_time=$(FUZZ_SECONDS)

# Chaos drill: mixed load on one node while a random service is SIGKILLed every
# KILL_EVERY seconds; exits non-zero on any lost or corrupted data or a service that does
# not come back. `make test` runs 60 s of it (tests/chaos/).
KILL_EVERY ?= 3
chaos: DURATION ?= 600
chaos: $(STAMP)
	PYTHONPATH=tests $(BIN)/python -m support.chaos --duration $(DURATION) --kill-every $(KILL_EVERY)

# Soak: steady load at a fixed moderate rate; latency, availability, and memory and
# file-descriptor trends of every node process. Report: bench/results/soak.json.
soak: DURATION ?= 900
soak: $(STAMP)
	PYTHONPATH=tests $(BIN)/python -m support.soak --duration $(DURATION)
