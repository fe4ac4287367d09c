# The tauforge CPU image: the KServe predictor (`tauforge serve --model-dir /mnt/models`) and every
# KFP component run from it. Build with `make images` (from the project root: this is the context).
#
# Stage 1 builds a self-contained virtual environment; stage 2 copies only that environment onto a
# clean base, so compilers, pip caches and the source tree stay out of the final image.

ARG PYTHON_BASE=python:3.11-slim-bookworm

FROM ${PYTHON_BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/tauforge
ENV PATH=/opt/tauforge/bin:$PATH
# The CPU build of torch from PyTorch's CPU index: PyPI's default wheel bundles CUDA (several GB).
ARG TORCH_SPEC=torch==2.13.0
RUN pip install --index-url https://download.pytorch.org/whl/cpu "${TORCH_SPEC}"
WORKDIR /src
COPY pyproject.toml README.md __init__.py ./
COPY kernels ./kernels
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
# Not editable: the image holds the installed package, not this folder. kfp comes with the project's
# dependencies, so components (install_kfp_package=False) install nothing when they start; the
# cloud extra lets tasks read data and publish to s3:// and gs:// stores.
RUN pip install ".[cloud]"

FROM ${PYTHON_BASE}
# The model card records the commit it was trained by; there is no .git inside the image.
ARG GIT_COMMIT=""
ENV PATH=/opt/tauforge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    TAUFORGE_GIT_COMMIT=${GIT_COMMIT} \
    NUMBA_CACHE_DIR=/tmp/numba-cache
COPY --from=build /opt/tauforge /opt/tauforge
# A fixed numeric uid so that runAsNonRoot can be checked by Kubernetes without a passwd lookup.
# /var/log/tauforge: the predictor's event log (--log-dir in the InferenceService), written as that user.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin tauforge \
    && install -d -o 10001 -g 10001 /var/log/tauforge
USER 10001
WORKDIR /home/tauforge
EXPOSE 8080
# Docker (not Kubernetes, which uses the probes KServe sets) asks the model server whether it is
# live. Only `tauforge serve` listens; a KFP task container has no server and is not run by Docker.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/v2/health/live', timeout=4)"]
CMD ["tauforge", "--help"]
