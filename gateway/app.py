"""The FastAPI application and its lifespan."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bus.metrics import GatewayMetrics
from bus.settings import Settings
from gateway import (
    asr_api,
    cookies_api,
    docs_page,
    errors,
    events_api,
    job_control,
    jobs_api,
    keys_api,
    openai_api,
    openai_models,
    queue_api,
    seed_api,
    status_api,
    web,
)
from gateway.bodies import BodyLimit
from gateway.state import GatewayState

log = logging.getLogger("gpubus.gateway")


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> FastAPI:
    """The app; its state (`app.state.gateway`, routes take it as `State`)
    is connected when the lifespan starts, before the first request."""
    registry = registry or CollectorRegistry()
    metrics = GatewayMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = await GatewayState.connect(settings, registry, metrics)
        app.state.gateway = state
        try:
            yield
        finally:
            await state.close()

    # FastAPI's /docs and /redoc load Swagger UI and ReDoc from a CDN, with
    # no CSP: off. /docs is gpubus' own page over local assets (docs_page.py).
    app = FastAPI(title="gpubus", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    errors.install(app)
    for module in (
        jobs_api,
        job_control,
        events_api,
        keys_api,
        queue_api,
        status_api,
        cookies_api,
        openai_api,
        openai_models,
        seed_api,
        asr_api,
    ):
        app.include_router(module.router)
    web.install(app)
    docs_page.describe_auth(app)
    docs_page.install(app)

    # ObserveLatency is added last, so it is outermost: its latency and
    # headers cover a body BodyLimit refused too.
    app.add_middleware(BodyLimit)
    app.add_middleware(ObserveLatency, metrics=metrics)
    return app


# Every response gets these unless its route chose its own (the web page's
# `no-cache`, SSE's `no-cache`): an API answer (a new key's secret, a
# transcript) is never stored by a cache, and never sniffed as another type.
API_HEADERS = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"))


def with_api_headers(message: Message) -> Message:
    """`message` (an http.response.start) with API_HEADERS it lacks."""
    present = {name.lower() for name, _ in message.get("headers", ())}
    missing = [h for h in API_HEADERS if h[0] not in present]
    if missing:
        message = {**message, "headers": [*message.get("headers", ()), *missing]}
    return message


class ObserveLatency:
    """Request latency by route and status, and API_HEADERS on every
    response, as plain ASGI middleware:
    `@app.middleware("http")` (BaseHTTPMiddleware) wraps every request in
    extra tasks and streams, which py-spy showed as a large share of the
    gateway's CPU per request."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = with_api_headers(message)
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            route = scope.get("route")
            self.metrics.http_latency.labels(
                scope["method"], getattr(route, "path", "unmatched"), str(status[0])
            ).observe(time.perf_counter() - t0)
