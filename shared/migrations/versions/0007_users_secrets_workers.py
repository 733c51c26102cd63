"""users own keys, jobs and files; encrypted user secrets; job priority; worker registry

Every existing key becomes a user of the same name (made unique), keeping its admin flag, and what the key
owned moves to that user.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 08:00:00
"""

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

OWNED = ("jobs", "files", "idempotency_keys")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column("limits", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
    )
    op.create_table(
        "user_secrets",
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_user_secrets_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "name", name=op.f("pk_user_secrets")),
    )
    op.create_table(
        "workers",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("gpu", sa.String(length=64), nullable=True),
        sa.Column("gpu_name", sa.String(length=255), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_workers")),
    )
    # Owners change from keys to users: drop the old foreign keys before the ids change.
    for table in OWNED:
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_constraint(f"fk_{table}_owner_id_api_keys", type_="foreignkey")
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.add_column(sa.Column("user_id", sa.String(length=40), nullable=True))
    _move_owners_to_users()
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.alter_column("user_id", existing_type=sa.String(length=40), nullable=False)
        batch_op.create_foreign_key(op.f("fk_api_keys_user_id_users"), "users", ["user_id"], ["id"])
        batch_op.create_index(batch_op.f("ix_api_keys_user_id"), ["user_id"], unique=False)
        batch_op.drop_column("is_admin")
    for table in OWNED:
        with op.batch_alter_table(table) as batch_op:
            batch_op.create_foreign_key(op.f(f"fk_{table}_owner_id_users"), "users", ["owner_id"], ["id"])
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
        batch_op.create_index("ix_jobs_owner_id_status", ["owner_id", "status"], unique=False)


def _move_owners_to_users() -> None:
    connection = op.get_bind()
    keys = connection.execute(sa.text("SELECT id, name, is_admin FROM api_keys ORDER BY created_at, id")).all()
    taken: set[str] = set()
    now = datetime.now(UTC)
    for key_id, key_name, is_admin in keys:
        name, n = key_name, 1
        while name in taken:
            n += 1
            name = f"{key_name}-{n}"
        taken.add(name)
        user_id = f"user-{uuid.uuid4().hex[:24]}"
        connection.execute(
            sa.text(
                "INSERT INTO users (id, name, is_admin, priority, limits, created_at) "
                "VALUES (:id, :name, :admin, 0, '{}', :now)"
            ),
            {"id": user_id, "name": name, "admin": bool(is_admin), "now": now},
        )
        connection.execute(sa.text("UPDATE api_keys SET user_id = :u WHERE id = :k"), {"u": user_id, "k": key_id})
        for table in OWNED:
            connection.execute(
                sa.text(f"UPDATE {table} SET owner_id = :u WHERE owner_id = :k"), {"u": user_id, "k": key_id}
            )


def downgrade() -> None:
    raise NotImplementedError("0007 moves ownership from keys to users; restore a backup to go back")
