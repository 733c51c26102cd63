"""The randomized fault run: `pytest tests/test_chaos.py --chaos-faults 30 --chaos-jobs 8 -s` for the full
run whose figures are in docs/reliability.md; `make test` runs a short one."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos import Chaos, Report, check
from tests.conftest import REDIS_URL, stack_client
from tests.services import FAST_TIMERS, StackClient, wait_for_end

pytestmark = [pytest.mark.training, pytest.mark.redis, pytest.mark.postgres, pytest.mark.chaos]


@pytest.fixture(scope="module")
def chaos_api(tmp_path_factory: pytest.TempPathFactory, local_root: Path, tiny_model: Path) -> Iterator[StackClient]:
    """A PostgreSQL stack that allows many attempts, so jobs outlast the faults instead of running out."""
    more = {"FTQ_MAX_ATTEMPTS": "20", "FTQ_CANCEL_GRACE": "10"}
    with stack_client("postgres", tmp_path_factory.mktemp("stack-chaos"), local_root, more) as client:
        yield client


def test_no_job_is_lost_or_run_twice_under_random_faults(
    chaos_api: StackClient, tiny_model: Path, train_file: Path, request: pytest.FixtureRequest
) -> None:
    pg_api = chaos_api
    faults, jobs = request.config.getoption("--chaos-faults"), request.config.getoption("--chaos-jobs")
    spec = {
        "base_model": str(tiny_model),
        "dataset": {"id": str(train_file)},
        "hyperparameters": {
            "batch_size": 4,
            "max_length": 320,
            "max_steps": 24 if faults >= 20 else 12,
            "save_steps": 4,
            "logging_steps": 1,
        },
    }
    ids = [pg_api.post("/jobs", json=spec).json()["id"] for _ in range(jobs)]
    chaos = Chaos(
        pg_api, REDIS_URL, seed=request.config.getoption("--chaos-seed"), lease_s=float(FAST_TIMERS["FTQ_LEASE_TTL"])
    )
    report = Report()

    chaos.run(ids, faults, report)
    for job_id in ids:
        wait_for_end(pg_api, job_id, timeout_s=300)
    check(pg_api, ids, chaos.hit, report)
    print(f"\nchaos: {report.summary()}")  # noqa: T201 - the figures docs/reliability.md quotes

    assert report.lost == []
    assert report.interleaved == []
    assert set(report.terminal_counts.values()) == {1}
    assert report.early_resumes == []
    assert report.cancelled_but_succeeded == []
    assert report.trainers_left == []
