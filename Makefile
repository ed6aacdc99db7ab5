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
