"""The FastAPI application and its lifespan."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry

from bus.settings import Settings
from gateway import (
    cookies_api,
    errors,
    events_api,
    job_control,
    jobs_api,
    keys_api,
    openai_api,
    queue_api,
    seed_api,
    status_api,
    web,
)
from gateway.state import GatewayState

log = logging.getLogger("gpubus.gateway")


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> FastAPI:
    state = GatewayState(settings, registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(title="gpubus", version="0.1.0", lifespan=lifespan)
    app.state.gateway = state
    errors.install(app)
    for module in (jobs_api, job_control, events_api, keys_api, queue_api, status_api, cookies_api, openai_api, seed_api):
        app.include_router(module.router)
    web.install(app)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        state.metrics.http_latency.labels(request.method, path, str(response.status_code)).observe(
            time.perf_counter() - t0
        )
        return response

    return app
