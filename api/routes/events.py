"""A job's event log: paged, and live as Server-Sent Events."""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from api.deps import AsyncCurrentUser, CurrentUser, JobId, SessionDep, owner_scope
from api.errors_doc import COMMON, errors
from api.schemas import MAX_INT64, EventList, EventRead
from shared.db import run_read, session_scope
from shared.events import list_events
from shared.jobs import get_job

router = APIRouter(prefix="/jobs", tags=["events"], responses=errors(*COMMON))
STREAM_POLL_S = 0.5
KEEPALIVE_S = 15.0
STREAM_BATCH = 200


@router.get("/{job_id}/events", responses=errors(404), response_model=EventList)
async def list_job_events(
    job_id: JobId,
    user: AsyncCurrentUser,
    after: Annotated[int | None, Query(ge=0, le=MAX_INT64, description="Id of the last event already seen.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="Events per page.")] = 100,
) -> EventList:
    """List a job's events, oldest first."""
    return await run_read(_page_of_events, job_id, owner_scope(user), after, limit)


def _page_of_events(
    connection: Connection, job_id: str, owner_id: str | None, after: int | None, limit: int
) -> EventList:
    with Session(connection) as session:
        get_job(session=session, job_id=job_id, owner_id=owner_id)
        events, has_more = list_events(session=session, job_id=job_id, after=after, limit=limit)
        return EventList(data=[EventRead.model_validate(e) for e in events], has_more=has_more)


def _next_events(job_id: JobId, after: int | None) -> tuple[list[EventRead], bool]:
    with session_scope() as session:
        events, _more = list_events(session=session, job_id=job_id, after=after, limit=STREAM_BATCH)
        ended = get_job(session=session, job_id=job_id).status.is_terminal
        return [EventRead.model_validate(e) for e in events], ended


def _sse(event: EventRead) -> str:
    return f"id: {event.id}\nevent: {event.type.value}\ndata: {event.model_dump_json()}\n\n"


@router.get(
    "/{job_id}/events/stream",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events, one per job event."},
        **errors(404),
    },
)
def stream_job_events(
    job_id: JobId,
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_INT64, description="Resume after this event id.")] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_INT64, description="Start after this event id.")] = None,
) -> StreamingResponse:
    """Stream a job's events as they happen; the stream ends after the job's last event."""
    get_job(session=session, job_id=job_id, owner_id=owner_scope(user))
    session.close()  # the stream may last hours: give the connection back; each poll opens its own session

    async def events() -> AsyncIterator[str]:
        """Poll the event log and send what is new, with a keep-alive comment when idle."""
        cursor = last_event_id if last_event_id is not None else after
        idle = 0.0
        while not await request.is_disconnected():
            batch, ended = await run_in_threadpool(_next_events, job_id, cursor)
            for event in batch:
                yield _sse(event)
                cursor = event.id
            if ended and not batch:
                yield "event: end\ndata: {}\n\n"
                return
            idle = 0.0 if batch else idle + STREAM_POLL_S
            if idle >= KEEPALIVE_S:
                idle = 0.0
                yield ": keep-alive\n\n"
            await asyncio.sleep(0 if len(batch) == STREAM_BATCH else STREAM_POLL_S)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
