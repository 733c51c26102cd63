"""job change notifications: on PostgreSQL, a job whose shown columns change, or that is deleted, notifies
`ftq_jobs` with its id

The API keeps jobs as it last showed them and drops one when its id is notified (`api.viewcache`). The triggers
catch every writer of `jobs` (API, workers, reconciler, a hand-run UPDATE); notifications are sent at commit, in
commit order, and not at all for a transaction rolled back. Only the columns a job is shown with count (those of
`shared.jobs.SHOWN_COLUMNS`, checked by tests/test_job_view_cache.py): a running job's heartbeat every second would
otherwise drop it as often. Its owner's name is shown too, from `users`, which has no rename. SQLite has no
notifications: nothing to do there.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 16:30:00
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SHOWN = (
    "owner_id", "status", "priority", "spec", "metadata", "progress", "stats", "result", "error_code", "error_message",
    "error_param", "attempt", "worker", "preemptions", "created_at", "started_at", "finished_at", "wandb_url",
    "wandb_dir",
)  # fmt: skip
JSON_COLUMNS = {"spec", "metadata", "progress", "stats", "result"}  # `json` has no equality: compared as text


def _row(alias: str) -> str:
    return ", ".join(f"{alias}.{name}::text" if name in JSON_COLUMNS else f"{alias}.{name}" for name in SHOWN)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE FUNCTION ftq_notify_job_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('ftq_jobs', OLD.id);
            RETURN NULL;
        END $$
        """
    )
    # Not on INSERT: a job no one has read yet is in no cache.
    op.execute(
        "CREATE TRIGGER jobs_notify_change AFTER UPDATE ON jobs FOR EACH ROW"
        f" WHEN (ROW({_row('OLD')}) IS DISTINCT FROM ROW({_row('NEW')}))"
        " EXECUTE FUNCTION ftq_notify_job_change()"
    )
    op.execute(
        "CREATE TRIGGER jobs_notify_delete AFTER DELETE ON jobs FOR EACH ROW EXECUTE FUNCTION ftq_notify_job_change()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER jobs_notify_delete ON jobs")
    op.execute("DROP TRIGGER jobs_notify_change ON jobs")
    op.execute("DROP FUNCTION ftq_notify_job_change()")
