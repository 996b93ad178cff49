"""`/docs`: Swagger UI for the gateway's OpenAPI document, served from this
machine only.

FastAPI's own page loads Swagger UI from a CDN with an inline script and no
CSP, so it stays off (app.py). The assets here are Swagger UI's files as the
`fastapi-offline` package ships them (a dependency); the page and its
start-up script are gpubus' own static files, under a CSP that allows
scripts from this origin only. Without that package /docs is simply absent
(/openapi.json is always served).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response

from gateway.web import SECURITY_HEADERS, STATIC_DIR, StaticAssets

ASSETS_PACKAGE = "fastapi_offline"
PAGE = STATIC_DIR / "docs" / "index.html"

# The web page's policy, except: Swagger UI sets inline styles, draws its
# icons from data: URIs, and "try it out" sends requests to this origin.
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)


def assets_dir() -> Path | None:
    """Where Swagger UI's files are, if the package that ships them is installed."""
    if importlib.util.find_spec(ASSETS_PACKAGE) is None:
        return None
    path = Path(str(importlib.resources.files(ASSETS_PACKAGE) / "static"))
    return path if (path / "swagger-ui-bundle.js").is_file() and (path / "swagger-ui.css").is_file() else None


def describe_auth(app: FastAPI) -> None:
    """Name the bearer key in the OpenAPI document (routes read it by hand,
    gateway/auth.py, so FastAPI cannot see it): /docs gets its Authorize
    button, and generated clients a place for the key."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        first = app.openapi_schema is None
        schema = default()  # built once, then FastAPI's cached copy
        if first:
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["apiKey"] = {"type": "http", "scheme": "bearer", "description": "a gpubus API key (gpb_...)"}
            schema["security"] = [{"apiKey": []}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI) -> bool:
    """Serve /docs if the assets are here; whether it is served."""
    assets = assets_dir()
    if assets is None:
        return False

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        response = FileResponse(PAGE, media_type="text/html; charset=utf-8")
        response.headers.update(SECURITY_HEADERS | {"Content-Security-Policy": CSP})
        return response

    app.mount("/docs/assets", StaticAssets(directory=assets), name="docs-assets")
    return True
