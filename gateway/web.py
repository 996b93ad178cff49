"""The web page for people: `/` and its static assets under `/static/`.

A tiny static app (plain HTML, CSS and one script, no build step) that talks
only to this gateway's REST API with the API key as a bearer header. Every
response here carries a strict Content-Security-Policy: scripts and styles
from this origin only (no inline script), fetches only to this origin, no
frames, no forms posting elsewhere, so the page can call no other host.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent / "static"

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Small files that change with the gateway version: revalidate, never stale.
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


def secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


class StaticAssets(StaticFiles):
    """Starlette's static files with the page's security headers."""

    def file_response(self, full_path, stat_result, scope: Scope, status_code: int = 200) -> Response:
        return secured(super().file_response(full_path, stat_result, scope, status_code))


@router.api_route("/", methods=["GET", "HEAD"])
async def index() -> Response:
    return secured(FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8"))


@router.get("/favicon.ico")
async def favicon() -> Response:
    """Browsers ask for it whatever the page says; answer with the SVG icon."""
    return secured(FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml"))


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/static", StaticAssets(directory=STATIC_DIR), name="static")
