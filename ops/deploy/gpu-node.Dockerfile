# syntax=docker/dockerfile:1
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
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# The base tag pins the Ubuntu release; its python3.12 is the one that release ships.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/gpubus
# The lock made from pyproject.toml by `python -m ops.locks` (the node's
# dependencies and the `gpu` extra: nvidia-ml-py for GPU metrics, no torch), hashes checked.
COPY ops/deploy/requirements/gpu-node.txt /tmp/requirements.txt
RUN /opt/gpubus/bin/pip install --require-hashes --requirement /tmp/requirements.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas schemas
COPY bus bus
COPY processors processors
COPY gateway gateway
COPY gpu_node gpu_node
COPY cpu_node cpu_node
COPY ops ops
RUN /opt/gpubus/bin/pip install --no-deps /src

FROM ${CUDA_IMAGE}
LABEL org.opencontainers.image.title="gpubus-gpu-node" \
      org.opencontainers.image.description="gpubus GPU worker node (CUDA 12.8, cuDNN 9)"
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 \
    && rm -rf /var/lib/apt/lists/* \
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
