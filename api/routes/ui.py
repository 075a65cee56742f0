"""/ui: the web dashboard, a small static app (no build step) that drives the public /v1 API.

The HTML shell carries no data and no secrets: the browser keeps the API key in sessionStorage and sends it
as a Bearer header on every /v1 call it makes itself. Every path under /ui that is not a static asset gets the
same shell, so deep links (/ui/jobs/ftjob-...) survive a reload.
"""

from __future__ import annotations

import html
from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

UI_DIR = Path(__file__).resolve().parents[1] / "ui"
STATIC_DIR = UI_DIR / "static"

# Scripts and styles come from our own origin only: no inline code, so injected markup cannot run.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}

router = APIRouter(include_in_schema=False)
_static = StaticFiles(directory=STATIC_DIR)


@lru_cache(maxsize=1)
def _shell_template() -> str:
    return (UI_DIR / "index.html").read_text(encoding="utf-8")


def _shell(request: Request) -> HTMLResponse:
    # root_path is set when the API sits under a path prefix behind a proxy; the app derives /v1 from it.
    root = html.escape(str(request.scope.get("root_path", "")).rstrip("/"), quote=True)
    body = _shell_template().replace("{{ROOT}}", root)
    return HTMLResponse(body, headers={**SECURITY_HEADERS, "cache-control": "no-store"})


@router.get("/")
def root(request: Request) -> RedirectResponse:
    return RedirectResponse(str(request.scope.get("root_path", "")).rstrip("/") + "/ui", status_code=307)


@router.get("/ui", response_class=HTMLResponse)
def dashboard(request: Request) -> HTMLResponse:
    return _shell(request)


@router.get("/ui/static/{path:path}")
async def static_asset(path: str, request: Request) -> Response:
    # StaticFiles refuses paths that leave its directory and answers If-None-Match with 304.
    response = await _static.get_response(path, request.scope)
    # Revalidate every time (cheap 304s): module imports carry no version in their URLs.
    response.headers["cache-control"] = "no-cache"
    response.headers.update(SECURITY_HEADERS)
    return response


@router.get("/ui/{page:path}", response_class=HTMLResponse)
def dashboard_page(page: str, request: Request) -> HTMLResponse:
    return _shell(request)
