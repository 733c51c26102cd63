"""A job's evaluation: the scores of the fine-tune (and of the base model) and every prediction."""

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from api.deps import CurrentUser, JobId, SessionDep, owner_scope
from api.errors_doc import COMMON, errors
from shared.errors import JobNotFound
from shared.jobs import get_job
from shared.models import Job

router = APIRouter(prefix="/jobs", tags=["evaluation"], responses=errors(*COMMON))


class EvaluationRead(BaseModel):
    """How the fine-tune (or, for an evaluation job without an adapter, the base model) scored on the evaluation rows
    (numeric: the course's price metrics)."""

    object: str = "fine_tuning.job.evaluation"
    model: str = Field(
        "fine-tune", description="What was scored: `fine-tune` (base model and adapter) or `base model`."
    )
    metric: str
    rows: int
    mae: float | None = Field(None, description="Mean absolute error of the parsed answers.")
    rmsle: float | None = Field(None, description="Root mean squared log error of the parsed answers.")
    hit_rate: float | None = Field(None, description="Share within $40 or 20% of the truth (the course's green).")
    near_rate: float | None = Field(None, description="Share within $80 or 40% (orange).")
    unparsable: int | None = Field(None, description="Answers with no number: counted as misses.")
    accuracy: float | None = Field(None, description="exact_match: share of answers equal to the truth.")
    baseline: dict[str, Any] | None = Field(None, description="The same figures for the base model, when asked.")
    predictions_url: str
    chart_urls: list[str] = Field([], description="PNG charts: truth against prediction, error by price band.")


def _evaluation(job: Job) -> dict[str, Any]:
    evaluation = (job.result or {}).get("evaluation")
    if not evaluation:
        raise JobNotFound(f"job {job.id} has no evaluation (none asked, or not finished)", param="job_id")
    return dict(evaluation)


@router.get("/{job_id}/evaluation", response_model=EvaluationRead, responses=errors(404))
def read_job_evaluation(job_id: JobId, session: SessionDep, user: CurrentUser) -> EvaluationRead:
    """The evaluation's scores, for the fine-tune and (with `baseline`) the base model."""
    evaluation = _evaluation(get_job(session=session, job_id=job_id, owner_id=owner_scope(user)))
    fields = {k: v for k, v in evaluation.items() if k not in ("predictions_path", "charts")}
    charts = [f"/jobs/{job_id}/evaluation/charts/{name}" for name in evaluation.get("charts", [])]
    return EvaluationRead(**fields, predictions_url=f"/jobs/{job_id}/evaluation/predictions", chart_urls=charts)


@router.get(
    "/{job_id}/evaluation/predictions",
    response_class=FileResponse,
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "One JSON line per row."}, **errors(404)},
)
def download_job_predictions(job_id: JobId, session: SessionDep, user: CurrentUser) -> FileResponse:
    """Every evaluation row as JSON lines: truth, answer, parsed prediction, grade (and the base model's)."""
    path = Path(_evaluation(get_job(session=session, job_id=job_id, owner_id=owner_scope(user)))["predictions_path"])
    if not path.exists():
        raise JobNotFound(f"the predictions of job {job_id} are gone", param="job_id")
    return FileResponse(path, media_type="application/x-ndjson", filename=f"{job_id}-predictions.jsonl")


@router.get(
    "/{job_id}/evaluation/charts/{name}",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}, "description": "A PNG chart."}, **errors(404)},
)
def download_job_chart(
    job_id: JobId, name: Annotated[str, PathParam(pattern=r"^[a-z-]+\.png$")], session: SessionDep, user: CurrentUser
) -> FileResponse:
    """One of the evaluation's charts (`scatter.png`, `error-by-band.png`)."""
    evaluation = _evaluation(get_job(session=session, job_id=job_id, owner_id=owner_scope(user)))
    if name not in evaluation.get("charts", []):
        raise JobNotFound(f"job {job_id} has no chart {name!r}", param="name")
    path = Path(evaluation["predictions_path"]).parent / name
    if not path.exists():
        raise JobNotFound(f"the chart {name!r} of job {job_id} is gone", param="name")
    return FileResponse(path, media_type="image/png")
