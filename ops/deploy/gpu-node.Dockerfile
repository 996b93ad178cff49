# gpubus GPU node: faster-whisper on CUDA (CTranslate2 4.x: CUDA 12 + cuDNN 9),
# for a rented GPU box (RunPod, Lambda, Vast.ai) or a workstation.
#
#   docker build -f ops/deploy/gpu-node.Dockerfile -t gpubus-gpu-node:0.1.0 .   # from the repo root
#   docker run --gpus all -e GPUBUS_GATEWAY_URL=https://gw.example -e GPUBUS_API_KEY=gpb_... gpubus-gpu-node:0.1.0
#
# Environment only: GPUBUS_GATEWAY_URL, GPUBUS_API_KEY (a key with the `node`
# role), GPUBUS_NODE_CONCURRENCY, and GPUBUS_WHISPER_MODEL: /models/large-v3 in
# this image, a volume the node reads and never fills. Put the model there once:
#   docker run --rm -v gpubus-models:/models gpubus-gpu-node:0.1.0 models fetch large-v3
# then run the node with `-v gpubus-models:/models:ro`. Another model: fetch
# it the same way and set GPUBUS_WHISPER_MODEL=/models/<name>.
# Needs an NVIDIA driver for CUDA 12.8 (>= 570) and the NVIDIA Container Toolkit.

# CTranslate2 >= 4.5 is built against CUDA 12 and cuDNN 9 and loads
# libcublas.so.12 / libcudnn 9 from the system: the cudnn runtime image has both.
# The test suite builds it on a local Debian base instead (CUDA_IMAGE and
# PYTHON=python3 as build args, .ci/debian-base) and runs it with --device cpu.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
# The base tag pins the Ubuntu release; its python3.12 is the one that release ships.
ARG PYTHON=python3.12
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN if ! "$PYTHON" -m venv --help >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends "$PYTHON" "$PYTHON-venv" \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && "$PYTHON" -m venv /opt/gpubus
# The lock made from pyproject.toml by `python -m ops.locks` (the node's
# dependencies and the `gpu` extra: nvidia-ml-py for GPU metrics, no torch), hashes checked.
COPY ops/deploy/requirements/gpu-node.txt /tmp/requirements.txt
# The machine's own package index, where it has one, comes in as build
# secrets (`pip.conf`; `pip-ca`, the CA of a TLS-inspecting proxy): used by
# this step only, never written into a layer (.ci/image_build.py passes them).
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=pip-ca,target=/run/secrets/pip-ca \
    /opt/gpubus/bin/pip install --require-hashes --no-deps --requirement /tmp/requirements.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY bus bus
COPY processors processors
COPY gateway gateway
COPY gpu_node gpu_node
COPY cpu_node cpu_node
COPY ops ops
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf \
    --mount=type=secret,id=pip-ca,target=/run/secrets/pip-ca \
    /opt/gpubus/bin/pip install --no-deps /src

FROM ${CUDA_IMAGE}
ARG PYTHON=python3.12
LABEL org.opencontainers.image.title="gpubus-gpu-node" \
      org.opencontainers.image.description="gpubus GPU worker node (CUDA 12.8, cuDNN 9)"
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN if ! command -v "$PYTHON" >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends "$PYTHON" \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/gpubus gpubus \
    && mkdir /models && chown 10001:10001 /models
COPY --from=build /opt/gpubus /opt/gpubus
ENV PATH=/opt/gpubus/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GPUBUS_HOST=0.0.0.0 \
    GPUBUS_DEVICE=cuda \
    GPUBUS_WHISPER_MODEL=/models/large-v3 \
    GPUBUS_METRICS_PORT=9101 \
    GPUBUS_LOG_FORMAT=json
USER 10001:10001
WORKDIR /home/gpubus
EXPOSE 9101
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "ops.healthcheck", "node"]
ENTRYPOINT ["gpubus"]
CMD ["gpu-node"]
