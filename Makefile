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

# Fuzzing campaigns are long: never part of `make test` (which replays every corpus).
# Each harness runs FUZZ_SECONDS on its own (5 harnesses: 5 minutes by default) with a
# working corpus in .fuzz/<name> and the committed seeds in tests/fuzz/corpus/<name>;
# FUZZ=<name> (or a list) picks harnesses, e.g. `make fuzz FUZZ=address FUZZ_SECONDS=600`.
FUZZ_SECONDS ?= 60
FUZZ_HARNESS_oap := fuzz_oap_decoder
FUZZ_HARNESS_ipc := fuzz_ipc_decoder
FUZZ_HARNESS_address := fuzz_address
FUZZ_HARNESS_range := fuzz_range
FUZZ_HARNESS_manifest := fuzz_manifest
FUZZ_ALL := oap ipc address range manifest
FUZZ ?= $(FUZZ_ALL)
fuzz: $(STAMP)
	$(foreach name,$(FUZZ),$(if $(FUZZ_HARNESS_$(name)),,$(error unknown fuzz harness '$(name)': choose from $(FUZZ_ALL))))
	$(BIN)/python -m pip install -q atheris==3.0.0
	$(foreach name,$(FUZZ),mkdir -p .fuzz/$(name) && \
	  $(BIN)/python tests/fuzz/$(FUZZ_HARNESS_$(name)).py .fuzz/$(name) tests/fuzz/corpus/$(name) \
	    -max_total_time=$(FUZZ_SECONDS) && ) true

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
