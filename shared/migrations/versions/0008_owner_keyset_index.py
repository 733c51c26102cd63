"""an index for each owner's jobs, newest first (keyset paging of GET /jobs for a non-admin key)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 09:30:00
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.create_index("ix_jobs_owner_id_created_at_id", ["owner_id", "created_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("ix_jobs_owner_id_created_at_id")
