"""The web dashboard: a static page at `/` and its assets under `/static`.

The page holds no data itself (it signs in with an API key and calls the API from the browser), so it is served
without authentication and left out of the OpenAPI schema.
"""

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
INDEX = STATIC_DIR / "index.html"

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=FileResponse)
def dashboard() -> FileResponse:
    """Serve the dashboard page; it is revalidated on each load so a new release shows at once."""
    return FileResponse(INDEX, media_type="text/html", headers={"Cache-Control": "no-cache"})


def mount_dashboard(app: FastAPI) -> None:
    """Add the dashboard page at `/` and its static assets at `/static` to an app."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
