"""Liveness of the API and its database."""

from fastapi import APIRouter
from sqlalchemy import text

from api.deps import SessionDep
from api.errors_doc import errors

router = APIRouter(tags=["health"], responses=errors(500, 503))


@router.get("/healthz")
def healthz(session: SessionDep) -> dict[str, str]:
    """Answer ok when the API can reach its database."""
    session.execute(text("SELECT 1"))
    return {"status": "ok"}
