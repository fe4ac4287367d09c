# make run   - set up .venv (if missing or stale), then run the main job on its embedded defaults
# make test  - set up, then run the test suite (under 10 minutes on 2 cores)
# make bench - set up, then run the speed comparisons against EconML (tests/benchmarks/)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tauforge-installed
# The CPU build of torch; on this machine pip takes it from local disk. Override for a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup run test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	@touch $(STAMP)

run: setup
	$(BIN)/tauforge run --demo

test: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python tests/benchmarks/bench_forest.py
	$(BIN)/python tests/benchmarks/bench_accuracy.py
	$(BIN)/python tests/benchmarks/bench_serving.py
	$(BIN)/python tests/benchmarks/bench_boosting.py
	$(BIN)/python tests/benchmarks/bench_bootstrap.py coverage
	$(BIN)/python tests/benchmarks/bench_bootstrap.py timing

clean:
	rm -rf $(VENV) build *.egg-info
