"""The service's page at ``/``: a view of the read endpoints for a person, served with its assets.

The page is a server-rendered shell (Jinja2); its script reads ``/device``, ``/luts``, ``/lut/{shape}``
and ``/jobs`` with the token the person entered, so the page shows nothing the API would not.
Plotly's JavaScript comes from the ``plotly`` package and is served from here: GPU hosts are
often offline, and the browser test checks that no request leaves the service.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.templating import Jinja2Templates

from profiler_service.errors import NotFound

router = APIRouter(include_in_schema=False)
PAGE = Path(__file__).parent.parent / "page"
TEMPLATES = Jinja2Templates(directory=PAGE)
# the page's own script and Plotly's: nothing inline, nothing from elsewhere (Plotly sets inline styles)
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def _plotly_js() -> Path | None:
    """Plotly's bundle inside its Python package (found without importing it), where installed: a
    service without it still serves the page, which says why it draws no staircase."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


ASSETS = {
    "page.js": (PAGE / "page.js", "text/javascript", "no-cache"),
    "page.css": (PAGE / "page.css", "text/css", "no-cache"),
    "plotly.min.js": (_plotly_js(), "text/javascript", "public, max-age=86400"),
}
PLOTLY_MISSING = "plotly is not installed with this service (pip install plotly): the page draws no staircase"


@router.get("/", response_class=HTMLResponse)
def page(request: Request) -> HTMLResponse:
    settings = request.app.state.halp_settings
    context = {"token_required": settings.api_token is not None, "version": request.app.version}
    response = TEMPLATES.TemplateResponse(request, "index.html", context)
    response.headers["Content-Security-Policy"] = CSP
    return response


@router.get("/ui/{name}")
def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFound(f"no asset {name!r}")
    path, media_type, cache = ASSETS[name]
    if path is None:
        raise NotFound(PLOTLY_MISSING)
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": cache})
