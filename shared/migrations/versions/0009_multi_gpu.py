"""multi-GPU jobs: the GPUs a job asks for, its time limit, and the workers whose GPUs an attempt also holds

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 14:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("helpers", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("gpus", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("time_limit_s", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_column("time_limit_s")
        batch_op.drop_column("gpus")
        batch_op.drop_column("helpers")
