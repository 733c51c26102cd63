"""job change notifications: on PostgreSQL, every update or delete of a job notifies `ftq_jobs` with its id

The API keeps polled jobs as it last showed them and drops one when its id is notified (`api.viewcache`). A
trigger catches every writer (API, workers, reconciler, a hand-run UPDATE); notifications are sent at commit, in
commit order, and not at all for a transaction rolled back. SQLite has no notifications: nothing to do there.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 16:30:00
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


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
        "CREATE TRIGGER jobs_notify_change AFTER UPDATE OR DELETE ON jobs"
        " FOR EACH ROW EXECUTE FUNCTION ftq_notify_job_change()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER jobs_notify_change ON jobs")
    op.execute("DROP FUNCTION ftq_notify_job_change()")
