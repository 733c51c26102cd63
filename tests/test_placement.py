"""Where queued jobs start: N GPUs of one box, a reservation for the first job that cannot start, and backfill only
when it cannot delay that job."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from shared.placement import Gpu, Reservation, Start, plan_starts

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)


@dataclass(frozen=True)
class Candidate:
    """A queued job as placement sees it."""

    id: str
    gpus: int = 1
    time_limit_s: int | None = None


def box(name: str, free: int, busy_until: list[datetime | None] | None = None) -> list[Gpu]:
    """A box's GPUs: `free` free ones, then one busy GPU per entry of `busy_until` (its job's predicted end)."""
    gpus = [Gpu(f"gpu{i}@{name}", name) for i in range(free)]
    ends = busy_until or []
    return gpus + [Gpu(f"gpu{free + i}@{name}", name, busy=True, ends_at=end) for i, end in enumerate(ends)]


def minutes(n: float) -> datetime:
    """`n` minutes from now."""
    return NOW + timedelta(minutes=n)


def test_a_job_takes_as_many_free_gpus_of_one_box_with_the_asking_worker_launching_it() -> None:
    starts, reservation = plan_starts([Candidate("big", gpus=2)], box("a", 3), NOW, prefer="gpu2@a")

    assert starts == [Start("big", "a", ("gpu2@a", "gpu0@a"))]
    assert reservation is None


def test_a_job_never_spans_two_boxes() -> None:
    starts, reservation = plan_starts([Candidate("big", gpus=2)], box("a", 1) + box("b", 1), NOW)

    assert starts == []
    assert reservation is None  # no box has two GPUs: it waits for one that has


def test_the_reserved_gpus_wait_for_the_big_job_instead_of_taking_a_small_one() -> None:
    gpus = box("a", 1, busy_until=[minutes(30)])
    order = [Candidate("big", gpus=2), Candidate("small")]

    starts, reservation = plan_starts(order, gpus, NOW)

    assert starts == []
    assert reservation == Reservation("big", "a", minutes(30))


def test_a_small_job_backfills_only_when_its_time_limit_ends_it_before_the_big_job_can_start() -> None:
    gpus = box("a", 1, busy_until=[minutes(30)])
    short, long = Candidate("short", time_limit_s=20 * 60), Candidate("long", time_limit_s=40 * 60)

    starts, _ = plan_starts([Candidate("big", gpus=2), long, short], gpus, NOW)

    assert starts == [Start("short", "a", ("gpu0@a",))]


def test_nothing_backfills_when_the_running_jobs_end_cannot_be_predicted() -> None:
    gpus = box("a", 1, busy_until=[None])

    starts, reservation = plan_starts([Candidate("big", gpus=2), Candidate("short", time_limit_s=60)], gpus, NOW)

    assert starts == []
    assert reservation == Reservation("big", "a", None)


def test_other_boxes_serve_later_jobs_while_one_box_is_held() -> None:
    gpus = box("a", 1, busy_until=[minutes(30)]) + box("b", 1)

    starts, reservation = plan_starts([Candidate("big", gpus=2), Candidate("small")], gpus, NOW)

    assert starts == [Start("small", "b", ("gpu0@b",))]
    assert reservation == Reservation("big", "a", minutes(30))


def test_the_reservation_goes_to_the_box_that_frees_up_soonest() -> None:
    gpus = box("a", 1, busy_until=[minutes(50)]) + box("b", 0, busy_until=[minutes(20), minutes(10)])

    _, reservation = plan_starts([Candidate("big", gpus=2)], gpus, NOW)

    assert reservation == Reservation("big", "b", minutes(20))


def test_a_job_larger_than_every_box_holds_nothing_back() -> None:
    starts, reservation = plan_starts([Candidate("huge", gpus=4), Candidate("small")], box("a", 2), NOW)

    assert starts == [Start("small", "a", ("gpu0@a",))]
    assert reservation is None


def test_a_one_gpu_job_goes_where_it_breaks_up_the_fewest_free_gpus() -> None:
    gpus = box("a", 2) + box("b", 1, busy_until=[minutes(5)])

    starts, _ = plan_starts([Candidate("small"), Candidate("big", gpus=2)], gpus, NOW)

    assert starts == [Start("small", "b", ("gpu0@b",)), Start("big", "a", ("gpu0@a", "gpu1@a"))]


def simulate(arrivals: list[tuple[int, Candidate, int]], gpus: int, until: int) -> dict[str, int]:
    """Run jobs (arrival minute, job, minutes it runs) on one box minute by minute; returns each job's start."""
    running: dict[str, tuple[list[str], int]] = {}  # job -> (its GPUs, end minute)
    started: dict[str, int] = {}
    queue: list[Candidate] = []
    for minute in range(until):
        queue += [job for at, job, _ in arrivals if at == minute]
        running = {job: run for job, run in running.items() if run[1] > minute}
        busy = {worker: end for workers, end in running.values() for worker in workers}
        box_gpus = [
            Gpu(f"g{i}", "box", f"g{i}" in busy, NOW + timedelta(minutes=busy.get(f"g{i}", 0) - minute))
            for i in range(gpus)
        ]
        starts, _ = plan_starts(queue, box_gpus, NOW)
        for start in starts:
            length = next(length for _, job, length in arrivals if job.id == start.job_id)
            running[start.job_id] = (list(start.workers), minute + length)
            started[start.job_id] = minute
        queue = [job for job in queue if job.id not in started]
    return started


def test_a_stream_of_small_jobs_cannot_starve_a_big_one() -> None:
    # Two GPUs; a one-GPU job of 10 minutes arrives every 5 minutes, so without a reservation one GPU is always busy
    # and the two-GPU job, queued at minute 1, would never find both free.
    small = [(at, Candidate(f"small-{at}"), 10) for at in range(0, 120, 5)]
    arrivals = [*small, (1, Candidate("big", gpus=2), 10)]

    started = simulate(arrivals, gpus=2, until=130)

    assert started["big"] <= 10  # it waits only for the jobs already running when it arrived
    assert all(started.get(job.id, 130) >= started["big"] for at, job, _ in small if at > 1)
