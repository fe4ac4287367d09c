# The tauforge CPU image: the KServe predictor (`tauforge serve --model-dir /mnt/models`) and every
# KFP component run from it. Build with `make images` (from the project root: this is the context).
#
# Stage `deps` builds a self-contained virtual environment with the dependencies, stage `build`
# installs the project into it; the final stage copies the environment onto a clean base in two
# layers, the dependencies (about 2 GB, from the build cache while pyproject.toml is unchanged) and
# the project (a few MB), so compilers, pip caches and the source tree stay out of the image and a
# change to the sources neither copies nor stores the dependencies again.

ARG PYTHON_BASE=python:3.11-slim-bookworm

FROM ${PYTHON_BASE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/tauforge
ENV PATH=/opt/tauforge/bin:$PATH
# The CPU build of torch: PyPI's default wheel bundles CUDA (several GB). From a wheel in
# docker-wheels/ when the build was given one (`make images TORCH_WHEELS=DIR` puts it there: a
# machine that reaches PyPI but not PyTorch's index), else from PyTorch's CPU index. Either way the
# build stops if the torch it installed is a CUDA build.
ARG TORCH_SPEC=torch==2.13.0
COPY docker-wheels/ /tmp/wheels/
RUN if ls /tmp/wheels/torch-*.whl >/dev/null 2>&1; then \
        pip install --find-links /tmp/wheels "${TORCH_SPEC}"; \
    else \
        pip install --index-url https://download.pytorch.org/whl/cpu "${TORCH_SPEC}"; \
    fi \
    && python -c "import sys, torch; sys.exit(torch.version.cuda and f'torch {torch.__version__} is a CUDA build')" \
    && rm -rf /tmp/wheels
WORKDIR /src
# The dependencies first, from pyproject.toml alone: a change to the sources then reinstalls only
# the project, not every dependency (the layers above and this one come from Docker's cache).
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['cloud']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

FROM deps AS build
RUN touch /tmp/deps-done
COPY README.md __init__.py ./
COPY kernels ./kernels
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
# Not editable: the image holds the installed package, not this folder. kfp comes with the project's
# dependencies, so components (install_kfp_package=False) install nothing when they start; the
# cloud extra lets tasks read data and publish to s3:// and gs:// stores.
RUN pip install ".[cloud]"
# Compile the numba kernels once, into a cache the final image keeps (10-20 s saved on the first fit
# or prediction of every container). Generic x86-64 code: numba keys its cache on the CPU, and a
# cache for the build machine's CPU would miss on any other node. Every uid reads it; numba writes
# to a private copy when it cannot write there (kernels/backends/numba_cache.py).
ENV NUMBA_CACHE_DIR=/opt/tauforge/numba-cache NUMBA_CPU_NAME=generic
RUN python -m tauforge.kernels.warmup && chmod -R a+rX /opt/tauforge/numba-cache
# What the project added to the environment, under /out at the same paths: the package, its
# metadata, its command and the kernels' cache. Anything else that changed (a dependency the
# project's install pulled in that `deps` lacks) stops the build rather than go missing.
RUN site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") \
    && find /opt/tauforge -newer /tmp/deps-done -type f \
        ! -path "$site/tauforge/*" ! -path "$site/tauforge-*.dist-info/*" ! -path /opt/tauforge/bin/tauforge \
        ! -path "/opt/tauforge/numba-cache/*" > /tmp/unexpected \
    && { [ ! -s /tmp/unexpected ] || { echo "the project's install changed files outside the project:"; \
         head -20 /tmp/unexpected; exit 1; }; } \
    && mkdir -p "/out$site" /out/opt/tauforge/bin \
    && cp -a "$site/tauforge" "$site"/tauforge-*.dist-info "/out$site/" \
    && cp -a /opt/tauforge/bin/tauforge /out/opt/tauforge/bin/ \
    && cp -a /opt/tauforge/numba-cache /out/opt/tauforge/

FROM ${PYTHON_BASE}
# What changes least first: the dependencies' layer and the user are reused from the build cache
# by every build with the same base and pyproject.toml, whatever the commit or the sources.
COPY --from=deps /opt/tauforge /opt/tauforge
# A fixed numeric uid so that runAsNonRoot can be checked by Kubernetes without a passwd lookup.
# /var/log/tauforge: the predictor's event log (--log-dir in the InferenceService), written as that user.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin tauforge \
    && install -d -o 10001 -g 10001 /var/log/tauforge
# The model card records the commit it was trained by; there is no .git inside the image.
ARG GIT_COMMIT=""
ENV PATH=/opt/tauforge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TAUFORGE_GIT_COMMIT=${GIT_COMMIT} \
    NUMBA_CACHE_DIR=/opt/tauforge/numba-cache \
    NUMBA_CPU_NAME=generic
COPY --from=build /out/ /
USER 10001
WORKDIR /home/tauforge
EXPOSE 8080
# Docker (not Kubernetes, which uses the probes KServe sets) asks the model server whether it is
# live. Only `tauforge serve` listens; a KFP task container has no server and is not run by Docker.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/live', timeout=4)"]
CMD ["tauforge", "--help"]
