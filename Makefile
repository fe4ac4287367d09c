# make run   - set up .venv (if missing or stale), then run the main job on its embedded defaults
# make test  - set up, then lint (ruff), check the layer rules (import-linter), and run the test suite
# make lint  - the linter and the layer rules alone
# make bench - set up, then run the speed comparisons against EconML (tests/benchmarks/)
# make images - build the CPU and CUDA images (needs Docker); push them with `docker push`
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tauforge-installed
# The CPU build of torch; on this machine pip takes it from local disk. Override for a CUDA build.
TORCH_SPEC ?= torch==2.13.0

# The project image. Its default tag must equal components/_kfp.py's IMAGE (tests/test_cluster.py
# checks); $TAUFORGE_IMAGE overrides both. The CUDA image is the same tag with -cuda appended.
IMAGE ?= $(or $(TAUFORGE_IMAGE),ghcr.io/tauforge/tauforge:0.1.0)
CUDA_IMAGE ?= $(IMAGE)-cuda
GIT_COMMIT := $(shell git rev-parse HEAD 2>/dev/null)

.PHONY: setup run lint test bench images clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	@touch $(STAMP)

run: setup
	$(BIN)/tauforge run --demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python tests/benchmarks/bench_forest.py
	$(BIN)/python tests/benchmarks/bench_accuracy.py
	$(BIN)/python tests/benchmarks/bench_serving.py
	$(BIN)/python tests/benchmarks/bench_boosting.py
	$(BIN)/python tests/benchmarks/bench_bootstrap.py coverage
	$(BIN)/python tests/benchmarks/bench_bootstrap.py timing
	$(BIN)/python tests/benchmarks/bench_bootstrap.py batching
	$(BIN)/python tests/benchmarks/bench_memory.py

images:
	@docker info >/dev/null 2>&1 || { echo "make images needs Docker: a docker client and a running" \
		"daemon, and \`docker info\` found none" >&2; exit 1; }
	docker build -f Dockerfile --build-arg GIT_COMMIT=$(GIT_COMMIT) --build-arg TORCH_SPEC="$(TORCH_SPEC)" -t $(IMAGE) .
	docker build -f Dockerfile.cuda --build-arg GIT_COMMIT=$(GIT_COMMIT) -t $(CUDA_IMAGE) .
	@echo "built $(IMAGE) and $(CUDA_IMAGE); push with: docker push $(IMAGE) && docker push $(CUDA_IMAGE)"

clean:
	rm -rf $(VENV) build *.egg-info
