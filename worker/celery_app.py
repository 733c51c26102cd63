"""The worker's Celery app: `celery -A worker.celery_app worker`. Never imports torch (the pool forks)."""

from shared.queue import make_celery

app = make_celery()
app.conf.include = ["worker.tasks", "worker.registry"]
