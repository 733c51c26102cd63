"""The Celery client: the API and the workers agree here on the broker, the task names and the queues.

The API sends tasks by name (`send_task`) and never imports the worker's code. Job messages carry only the
job id; the one exception is a dry run, which by definition has no stored job and carries the spec itself
(a spec holds no secrets).
"""

from functools import cache
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError

from shared.settings import Settings, get_settings

RUN_JOB_TASK = "ftq.run_job"
VALIDATE_JOB_TASK = "ftq.validate_job"
DRY_RUN_TASK = "ftq.dry_run"


def celery_config(settings: Settings) -> dict[str, object]:
    """Celery settings for ftq's long, single-process GPU jobs."""
    config: dict[str, object] = {
        "broker_url": settings.broker,
        "result_backend": settings.result_backend,
        "result_expires": 3600,
        "broker_connection_retry_on_startup": True,
        # An API request should learn fast that the broker is down (it answers 503), not hang in retries.
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        "redis_socket_connect_timeout": 5,
        "broker_connection_max_retries": None,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": settings.queue_name,
        # Job state lives in the database; only dry runs send an answer back.
        "task_ignore_result": True,
        # Ack on receipt: a job's fate is tracked in the database, not by broker redelivery, which would
        # run an hours-long job twice once it outlives the visibility timeout.
        "task_acks_late": False,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "worker_hijack_root_logger": False,
    }
    if settings.broker.startswith(("redis://", "rediss://")):
        # Take a message only when the process is free to run it (Redis only): none waits unacked behind a job.
        config["worker_disable_prefetch"] = True
    if settings.uses_embedded_broker:
        # kombu's SQLAlchemy transport has no fanout: remote control, gossip and mingle need it.
        config["worker_enable_remote_control"] = False
        # Its prefetch counts unacknowledged messages only: acked on receipt, a busy worker would reserve the next
        # bell while another GPU sits idle. Acked late, it takes none until its job ends. A bell redelivered after
        # a crash only makes a worker look for a queued job: it cannot run one twice.
        config["task_acks_late"] = True
    return config


def make_celery(settings: Settings | None = None) -> Celery:
    """A Celery app configured from settings."""
    settings = settings or get_settings()
    app = Celery("ftq")
    app.conf.update(celery_config(settings))
    return app


@cache
def get_celery() -> Celery:
    """The process's Celery client, built once from the settings."""
    return make_celery()


def enqueue_job(job_id: str) -> None:
    """Ring the GPU worker's bell for a committed, validated job (by task name, carrying only the id)."""
    get_celery().send_task(RUN_JOB_TASK, args=[job_id], queue=get_settings().queue_name, ignore_result=True)


def enqueue_validation(job_id: str) -> None:
    """Ask a validation worker to check a committed job's data before it is queued for a GPU."""
    get_celery().send_task(
        VALIDATE_JOB_TASK, args=[job_id], queue=get_settings().validate_queue_name, ignore_result=True
    )


def run_dry_run(spec: dict[str, Any], owner_id: str, timeout_s: float) -> dict[str, Any]:
    """Validate a spec as `owner_id` on a validation worker and wait for its answer (raises TimeoutError).

    The owner's id travels, never their tokens: the worker reads those itself.
    """
    queue = get_settings().validate_queue_name
    result = get_celery().send_task(DRY_RUN_TASK, args=[spec, owner_id], queue=queue)
    try:
        answer: dict[str, Any] = result.get(timeout=timeout_s)
    except CeleryTimeoutError as exc:
        raise TimeoutError(f"no validation worker answered within {timeout_s:.0f}s") from exc
    finally:
        result.forget()
    return answer


def queue_length(name: str) -> int:
    """Messages waiting in a queue of the broker (Redis or the embedded one)."""
    with get_celery().connection_for_write() as connection:
        declared = connection.default_channel.queue_declare(queue=name, durable=True, auto_delete=False)
        return int(declared.message_count)


def declare_queues() -> None:
    """Declare the GPU and validation queues once, before several workers start: kombu's SQLAlchemy transport
    (the embedded broker) creates a queue's row without handling a concurrent insert, so two workers declaring
    the same new queue at once can crash one of them."""
    settings = get_settings()
    for name in (settings.queue_name, settings.validate_queue_name):
        queue_length(name)
