"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL, and
upgrading a database that holds data keeps that data with the right owners."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.migrate import alembic_config, upgrade_database
from shared.models import ApiKey, Base, IdempotencyKey, Job, UploadedFile
from tests.conftest import _create_postgres_db, _drop_postgres_db

# Keys as 0006 stored them: (id, name, is_admin, created_at). Inserted in this order, which is neither the order
# of creation nor of ids, so the names 0007 gives prove it goes by created_at.
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
KEYS = [
    ("key-a-bob", "bob", False, T0 + timedelta(minutes=2)),
    ("key-b-alice-admin", "alice", True, T0 + timedelta(minutes=1)),
    ("key-c-alice", "alice", False, T0),
]
# What each key must become: the first alice created keeps the name, the second gets a suffix.
USER_OF_KEY = {"key-c-alice": "alice", "key-b-alice-admin": "alice-2", "key-a-bob": "bob"}
JOB_OF_KEY = {"key-a-bob": "ftjob-bob", "key-b-alice-admin": "ftjob-alice-admin", "key-c-alice": "ftjob-alice"}
FILE_ID, FILE_KEY = "file-1", "key-b-alice-admin"
IDEMPOTENCY_KEY, IDEMPOTENCY_OWNER = "retry-1", "key-c-alice"


@pytest.fixture(params=["sqlite", "postgres"])
def database_at_0006(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database migrated only to 0006 (owners are keys): a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ftq.db'}"
    else:
        url = _create_postgres_db()
    command.upgrade(alembic_config(url), "0006")
    yield url
    if request.param == "postgres":
        _drop_postgres_db(url)


def _insert_0006_data(url: str) -> None:
    """Two keys named alice (one admin), one bob; a job of each key, a file and an idempotency key."""
    engine = create_engine(url)
    with engine.begin() as connection:
        for key_id, name, is_admin, created_at in KEYS:
            connection.execute(
                text(
                    "INSERT INTO api_keys (id, name, prefix, key_hash, is_admin, created_at) "
                    "VALUES (:id, :name, :prefix, :hash, :admin, :created_at)"
                ),
                {
                    "id": key_id,
                    "name": name,
                    "prefix": key_id[:16],
                    "hash": f"hash-{key_id}",
                    "admin": is_admin,
                    "created_at": created_at,
                },
            )
        for key_id, job_id in JOB_OF_KEY.items():
            connection.execute(
                text(
                    "INSERT INTO jobs (id, owner_id, status, spec, metadata, progress, stats, result, attempt, "
                    "created_at) VALUES (:id, :owner, 'queued', '{}', '{}', '{}', '{}', '{}', 0, :created_at)"
                ),
                {"id": job_id, "owner": key_id, "created_at": T0},
            )
        connection.execute(
            text(
                "INSERT INTO files (id, owner_id, filename, format, bytes, sha256, path, created_at) "
                "VALUES (:id, :owner, 'train.jsonl', 'jsonl', 10, :sha, '/data/train.jsonl', :created_at)"
            ),
            {"id": FILE_ID, "owner": FILE_KEY, "sha": "0" * 64, "created_at": T0},
        )
        connection.execute(
            text(
                "INSERT INTO idempotency_keys (owner_id, key, request_hash, job_id, created_at) "
                "VALUES (:owner, :key, :hash, :job, :created_at)"
            ),
            {
                "owner": IDEMPOTENCY_OWNER,
                "key": IDEMPOTENCY_KEY,
                "hash": "1" * 64,
                "job": JOB_OF_KEY[IDEMPOTENCY_OWNER],
                "created_at": T0,
            },
        )
    engine.dispose()


@pytest.fixture
def upgraded_with_data(database_at_0006: str) -> str:
    """A 0006 database holding keys, jobs, a file and an idempotency key, then upgraded to head."""
    _insert_0006_data(database_at_0006)
    upgrade_database(database_at_0006)
    return database_at_0006


def _user_ids_by_key(url: str) -> dict[str, str]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, user_id FROM api_keys")).all()
    engine.dispose()
    return {str(key_id): str(user_id) for key_id, user_id in rows}


def test_migrations_leave_no_difference_from_the_models(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()

    assert diff == []


def test_upgrade_makes_a_uniquely_named_user_per_key_in_creation_order_keeping_the_admin_flag(
    upgraded_with_data: str,
) -> None:
    engine = create_engine(upgraded_with_data)
    with engine.connect() as connection:
        users = connection.execute(
            text(
                "SELECT u.name, u.is_admin FROM users u JOIN api_keys k ON k.user_id = u.id ORDER BY k.created_at, k.id"
            )
        ).all()
        user_count = connection.execute(text("SELECT count(*) FROM users")).scalar_one()
    engine.dispose()

    assert user_count == 3
    assert [(name, bool(is_admin)) for name, is_admin in users] == [
        ("alice", False),
        ("alice-2", True),
        ("bob", False),
    ]


def test_upgrade_points_each_key_at_the_user_it_became(upgraded_with_data: str) -> None:
    engine = create_engine(upgraded_with_data)
    with engine.connect() as connection:
        names: dict[str, str] = dict(
            connection.execute(text("SELECT k.id, u.name FROM api_keys k JOIN users u ON u.id = k.user_id")).all()
        )
    engine.dispose()

    assert names == USER_OF_KEY


def test_upgrade_moves_jobs_files_and_idempotency_keys_to_the_user_their_key_became(upgraded_with_data: str) -> None:
    user_of = _user_ids_by_key(upgraded_with_data)
    engine = create_engine(upgraded_with_data)
    with engine.connect() as connection:
        job_owners: dict[str, str] = dict(connection.execute(text("SELECT id, owner_id FROM jobs")).all())
        file_owners: dict[str, str] = dict(connection.execute(text("SELECT id, owner_id FROM files")).all())
        idempotency_rows = connection.execute(text("SELECT owner_id, key, job_id FROM idempotency_keys")).all()
    engine.dispose()

    assert job_owners == {job_id: user_of[key_id] for key_id, job_id in JOB_OF_KEY.items()}
    assert file_owners == {FILE_ID: user_of[FILE_KEY]}
    assert [tuple(row) for row in idempotency_rows] == [
        (user_of[IDEMPOTENCY_OWNER], IDEMPOTENCY_KEY, JOB_OF_KEY[IDEMPOTENCY_OWNER])
    ]


def test_upgrade_leaves_job_owners_enforced_as_users(upgraded_with_data: str) -> None:
    engine = create_engine(upgraded_with_data)
    if upgraded_with_data.startswith("sqlite"):
        # SQLite checks foreign keys only when asked, as the service's engines do (shared.db).
        event.listen(engine, "connect", lambda dbapi_conn, _record: dbapi_conn.execute("PRAGMA foreign_keys=ON"))
    insert_job = text(
        "INSERT INTO jobs (id, owner_id, status, spec, metadata, progress, stats, result, attempt, created_at) "
        "VALUES (:id, :owner, 'queued', '{}', '{}', '{}', '{}', '{}', 0, :created_at)"
    )
    try:
        with engine.begin() as connection:
            alice = connection.execute(text("SELECT id FROM users WHERE name = 'alice'")).scalar_one()
            connection.execute(insert_job, {"id": "ftjob-by-user", "owner": alice, "created_at": T0})
        with pytest.raises(IntegrityError):
            with engine.begin() as connection:
                connection.execute(insert_job, {"id": "ftjob-orphan", "owner": "user-nobody", "created_at": T0})
        # An old key id is no owner any more either: owners are users now.
        with pytest.raises(IntegrityError):
            with engine.begin() as connection:
                connection.execute(insert_job, {"id": "ftjob-by-key", "owner": "key-a-bob", "created_at": T0})
    finally:
        engine.dispose()


def test_upgrade_drops_is_admin_from_api_keys(upgraded_with_data: str) -> None:
    engine = create_engine(upgraded_with_data)
    columns = {column["name"] for column in inspect(engine).get_columns("api_keys")}
    engine.dispose()

    assert "is_admin" not in columns
    assert "user_id" in columns


def test_models_load_migrated_keys_and_what_they_owned_with_their_users(upgraded_with_data: str) -> None:
    engine = create_engine(upgraded_with_data)
    try:
        with Session(engine) as session:
            for key_id, user_name in USER_OF_KEY.items():
                assert session.get_one(ApiKey, key_id).user.name == user_name
                assert session.get_one(Job, JOB_OF_KEY[key_id]).owner.name == user_name
            assert session.get_one(ApiKey, "key-b-alice-admin").user.is_admin is True
            assert session.get_one(ApiKey, "key-c-alice").user.is_admin is False
            assert session.get_one(UploadedFile, FILE_ID).owner_id == session.get_one(ApiKey, FILE_KEY).user_id
            owner_id = session.get_one(ApiKey, IDEMPOTENCY_OWNER).user_id
            idempotency = session.get_one(IdempotencyKey, (owner_id, IDEMPOTENCY_KEY))
            assert idempotency.job_id == JOB_OF_KEY[IDEMPOTENCY_OWNER]
    finally:
        engine.dispose()
