# make run   - set up .venv (if missing or stale), then run the main job on its embedded defaults
# make test  - set up, then lint (ruff), check the layer rules (import-linter), and run the test suite
# make lint  - the linter and the layer rules alone
# make bench - set up, then run the speed comparisons against EconML (tests/benchmarks/)
# make images - build the CPU image, and the CUDA one where its base can be had (needs Docker)
# make image-cpu, make image-cuda - one of them
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
# The CPU image's base: the local one .ci/docker-setup builds (for machines that reach no container
# registry) when it exists, else the Dockerfile's default, the public python image. The CUDA
# image's base is Dockerfile.cuda's default.
LOCAL_BASE ?= tauforge-base:bookworm
PUBLIC_BASE := $(shell sed -n 's/^ARG PYTHON_BASE=//p' Dockerfile)
PYTHON_BASE ?= $(shell docker image inspect $(LOCAL_BASE) >/dev/null 2>&1 && echo $(LOCAL_BASE) || echo $(PUBLIC_BASE))
CUDA_BASE ?= $(shell sed -n 's/^ARG CUDA_BASE=//p' Dockerfile.cuda)
# A folder holding the CPU build of torch (torch-<version>+cpu-*.whl), for a build that cannot reach
# PyTorch's CPU index: by default pip's own find-links folder where it has one (this machine's).
# Empty: the image takes torch from PyTorch's CPU index.
TORCH_WHEELS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
TORCH_WHEEL = $(firstword $(wildcard $(addsuffix /torch-$(patsubst torch==%,%,$(TORCH_SPEC))+cpu-*.whl,$(TORCH_WHEELS))))
# RUN steps take the host's network: a daemon without a bridge (.ci/docker-setup's) has no other.
DOCKER_BUILD_FLAGS ?= --network host

.PHONY: setup run lint test bench images image-cpu image-cuda clean

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

# pytest-xdist workers for `make test`: one process left a core idle (its tests wait on servers and
# subprocesses); two took 432 s where one took 725 (docs/benchmarks.md). 0 runs the tests in one process.
TEST_WORKERS ?= 2

test: lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --durations=15 tests

bench: setup
	$(BIN)/python tests/benchmarks/bench_forest.py
	$(BIN)/python tests/benchmarks/bench_accuracy.py
	$(BIN)/python tests/benchmarks/bench_ape.py
	$(BIN)/python tests/benchmarks/bench_groups.py
	$(BIN)/python tests/benchmarks/bench_intervals.py
	$(BIN)/python tests/benchmarks/bench_refuters.py
	$(BIN)/python tests/benchmarks/bench_heterogeneity.py
	$(BIN)/python tests/benchmarks/bench_serving.py
	$(BIN)/python tests/benchmarks/bench_boosting.py
	$(BIN)/python tests/benchmarks/bench_nuisance.py
	$(BIN)/python tests/benchmarks/bench_bootstrap.py coverage
	$(BIN)/python tests/benchmarks/bench_bootstrap.py timing
	$(BIN)/python tests/benchmarks/bench_bootstrap.py batching
	$(BIN)/python tests/benchmarks/bench_memory.py

CUDA_BUILD = docker build $(DOCKER_BUILD_FLAGS) -f Dockerfile.cuda --build-arg CUDA_BASE=$(CUDA_BASE) \
	--build-arg GIT_COMMIT=$(GIT_COMMIT) -t $(CUDA_IMAGE) .

define need_docker
	@docker info >/dev/null 2>&1 || { echo "make $@ needs Docker: a docker client and a running daemon, and" \
		"\`docker info\` found none. .ci/docker-setup installs Docker, starts a daemon and builds a local" \
		"base image (.ci/docker-setup stop stops that daemon)" >&2; exit 1; }
endef

images: image-cpu
	@if docker image inspect $(CUDA_BASE) >/dev/null 2>&1 || docker pull $(CUDA_BASE); then \
		echo "$(CUDA_BUILD)" && $(CUDA_BUILD); \
	else \
		echo "make images: built $(IMAGE); skipped $(CUDA_IMAGE): its base $(CUDA_BASE) is not on this" \
			"machine and cannot be pulled. Build it where Docker Hub is reachable: make image-cuda" >&2; \
	fi

image-cpu:
	$(need_docker)
	@docker image inspect $(PYTHON_BASE) >/dev/null 2>&1 || docker pull $(PYTHON_BASE) || { \
		echo "make $@: the base image $(PYTHON_BASE) is not on this machine and cannot be pulled. Where no" \
			"container registry is reachable, .ci/docker-setup builds a local base ($(LOCAL_BASE)), which" \
			"make $@ then takes" >&2; exit 1; }
	@echo "make $@: $(IMAGE) on $(PYTHON_BASE), torch $(or $(TORCH_WHEEL),from PyTorch's CPU index)"
	@rm -f docker-wheels/*.whl
	$(if $(TORCH_WHEEL),@ln -f $(TORCH_WHEEL) docker-wheels/ 2>/dev/null || cp $(TORCH_WHEEL) docker-wheels/)
	docker build $(DOCKER_BUILD_FLAGS) -f Dockerfile --build-arg PYTHON_BASE=$(PYTHON_BASE) \
		--build-arg GIT_COMMIT=$(GIT_COMMIT) --build-arg TORCH_SPEC="$(TORCH_SPEC)" -t $(IMAGE) . ; \
		status=$$?; rm -f docker-wheels/*.whl; exit $$status
	@echo "make $@: built $(IMAGE); push it with: docker push $(IMAGE)"

image-cuda:
	$(need_docker)
	$(CUDA_BUILD)
	@echo "make $@: built $(CUDA_IMAGE); push it with: docker push $(CUDA_IMAGE)"

clean:
	rm -rf $(VENV) build *.egg-info
