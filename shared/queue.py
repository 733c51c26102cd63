"""The Celery client: the API and the worker agree here on the broker, the task name and the queue.

The API enqueues by name (`send_task`) and never imports the worker's code; messages carry only the job id.
"""

from functools import cache

from celery import Celery

from shared.settings import Settings, get_settings

RUN_JOB_TASK = "ftq.run_job"


def celery_config(settings: Settings) -> dict[str, object]:
    """Celery settings for ftq's long, single-process GPU jobs."""
    config: dict[str, object] = {
        "broker_url": settings.broker,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": settings.queue_name,
        "task_ignore_result": True,
        # Ack on receipt: a job's fate is tracked in the database, not by broker redelivery, which would
        # run an hours-long job twice once it outlives the visibility timeout.
        "task_acks_late": False,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": 1,
        "worker_hijack_root_logger": False,
    }
    if settings.uses_embedded_broker:
        # kombu's SQLAlchemy transport has no fanout: remote control, gossip and mingle need it.
        config["worker_enable_remote_control"] = False
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
    """Ring the worker's bell for a committed job (by task name, carrying only the id)."""
    app = get_celery()
    app.send_task(RUN_JOB_TASK, args=[job_id], queue=app.conf.task_default_queue)
