# gpubus gateway: the REST API, the materializer and the fallback router.
# Stateless (everything lives in JetStream): run as many as you like behind a
# load balancer. No model runtime in this image.
#
#   docker build -f ops/deploy/gateway.Dockerfile -t gpubus-gateway:0.1.0 .   # from the repo root
#
# Configuration is environment only: GPUBUS_NATS_URL (all servers,
# comma-separated), GPUBUS_ADMIN_TOKEN, GPUBUS_REPLICAS (3 on a cluster),
# GPUBUS_NATS_PUBLIC_URL (what remote nodes are told), GPUBUS_PORT.
# GPUBUS_GATEWAY_URL points the CLI inside the container at this gateway
# (`gpubus keys create ...` with the admin token from the environment).

# The public base a user pulls; the test suite passes a local Debian base
# (.ci/debian-base: Debian's python3 is 3.11 too).
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/gpubus
# Dependencies first (a layer that survives code changes): the lock made from
# pyproject.toml by `python -m ops.locks`, every file checked by its hash.
COPY ops/deploy/requirements/gateway.txt /tmp/requirements.txt
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
LABEL org.opencontainers.image.title="gpubus-gateway" \
      org.opencontainers.image.description="gpubus REST gateway"
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/gpubus gpubus
COPY --from=build /opt/gpubus /opt/gpubus
ENV PATH=/opt/gpubus/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GPUBUS_HOST=0.0.0.0 \
    GPUBUS_PORT=8000 \
    GPUBUS_LOG_FORMAT=json \
    GPUBUS_GATEWAY_URL=http://127.0.0.1:8000
USER 10001:10001
WORKDIR /home/gpubus
EXPOSE 8000
# Healthy = /ready: connected to NATS with the topology in place.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "ops.healthcheck", "gateway"]
ENTRYPOINT ["gpubus"]
CMD ["gateway"]
