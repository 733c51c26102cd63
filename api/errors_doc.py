"""The error envelope as the OpenAPI schema documents it, and which status codes each route may answer."""

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    """What went wrong: a stable code, a message for people, and the request field at fault."""

    code: str = Field(..., description="Stable machine-readable code, e.g. `not_found`, `limit_exceeded`.")
    message: str
    param: str | None = Field(None, description="The request field at fault (dotted path), if one is.")
    details: list[dict[str, Any]] | None = Field(None, description="Every invalid field, for a request error.")
    limit: str | None = Field(None, description="The per-user limit exceeded, for `limit_exceeded`.")


class ErrorResponse(BaseModel):
    """Every error response: `{"error": {...}}`."""

    error: ErrorDetail


DESCRIPTIONS = {
    401: "Missing, unknown or revoked API key.",
    403: "The key may not do this (admins only).",
    404: "No such resource for this caller (another user's is a 404 too).",
    409: "The resource's state does not allow this.",
    413: "The upload is over the size limit.",
    422: "A request field is invalid or over a limit; `param` names it.",
    429: "Too many requests; retry after `Retry-After` seconds.",
    500: "An unexpected error (logged on the server).",
    503: "The database or the queue is unavailable; retry after `Retry-After` seconds.",
    504: "No validation worker answered in time.",
}
COMMON = (401, 422, 429, 500, 503)


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these status codes, each with the error envelope."""
    return {code: {"model": ErrorResponse, "description": DESCRIPTIONS[code]} for code in codes}
