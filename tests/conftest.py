"""Fixtures on real parts: SQLite files, a PostgreSQL database per test module, the local Redis, a tiny Llama."""

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import event

from api.deps import job_view_cache, key_cache, spec_cache
from api.main import create_app
from shared.auth import create_api_key
from shared.db import get_async_engine, reset_engines, session_scope
from shared.migrate import upgrade_database
from shared.queue import get_celery
from shared.settings import get_settings
from tests.services import StackClient, running_stack

# Nothing in the suite may reach the Hugging Face Hub or the W&B cloud, however pytest is started.
for _name, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}.items():
    os.environ.setdefault(_name, _value)

REPO = Path(__file__).resolve().parent.parent
PRICER_ROWS = REPO / "examples" / "data" / "pricer-400.jsonl"
POSTGRES_ADMIN = os.environ.get("FTQ_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FTQ_TEST_REDIS", "redis://127.0.0.1:6379/0")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Sizes of the randomized fault run (tests/test_chaos.py)."""
    parser.addoption("--chaos-faults", type=int, default=7, help="faults to inject: each kind once (the full run: 30)")
    parser.addoption("--chaos-jobs", type=int, default=3, help="jobs to run under them (the full run: 8)")
    parser.addoption("--chaos-seed", type=int, default=1, help="seed of the fault sequence")


def clear_caches() -> None:
    """Forget cached settings, engines, checked keys, validated specs, shown jobs and the Celery client after the
    environment changed."""
    get_settings.cache_clear()
    key_cache.cache_clear()
    spec_cache.cache_clear()
    job_view_cache.cache_clear()
    get_celery.cache_clear()
    reset_engines()


@pytest.fixture(scope="session")
def pricer_rows() -> list[dict[str, object]]:
    """The bundled slice of real pricer rows."""
    return [json.loads(line) for line in PRICER_ROWS.read_text().splitlines()]


@pytest.fixture(scope="session")
def local_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The allowed root for local models and datasets."""
    return tmp_path_factory.mktemp("files")


@pytest.fixture(scope="session")
def tiny_model(local_root: Path) -> Path:
    """A tiny random Llama with a BPE tokenizer trained on the pricer rows, saved like a Hub model."""
    from worker.tiny_model import build_tiny_llama

    return build_tiny_llama(PRICER_ROWS, local_root / "models" / "tiny-llama")


@pytest.fixture(scope="session")
def train_file(local_root: Path, pricer_rows: list[dict[str, object]]) -> Path:
    """48 pricer rows as a .jsonl file under the allowed root."""
    path = local_root / "data" / "pricer-48.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in pricer_rows[:48]))
    return path


def _create_postgres_db(template: str | None = None) -> str:
    """A new PostgreSQL database (a copy of `template`, if named); its SQLAlchemy URL."""
    name = f"ftq_test_{uuid.uuid4().hex[:12]}"
    copy_of = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy_of}')
    return POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"


def _drop_postgres_db(url: str) -> None:
    reset_engines()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file with every migration applied, which each test copies (migrating each would take 0.15 s)."""
    path = tmp_path_factory.mktemp("migrated") / "ftq.db"
    upgrade_database(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def migrated_postgres() -> Iterator[str]:
    """The name of a PostgreSQL database with every migration applied, which each test's database is created from
    as a template (half the time of creating and migrating one)."""
    url = _create_postgres_db()
    upgrade_database(url)  # its engine is disposed at the end: a template must have no connection when copied
    yield url.rsplit("/", 1)[1]
    _drop_postgres_db(url)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database: a SQLite file, or a new PostgreSQL database (copies of one migrated per session;
    tests/test_migrations.py runs the migrations themselves)."""
    if request.param == "sqlite":
        path = tmp_path / "ftq.db"
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), path)
        yield f"sqlite:///{path}"
        return
    template = request.getfixturevalue("migrated_postgres")
    url = _create_postgres_db(template)
    yield url
    _drop_postgres_db(url)


@pytest.fixture
def queue_name() -> str:
    """A Redis queue of this test's own, so runs never share messages."""
    return f"ftq-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis_client(queue_name: str) -> Iterator[redis.Redis]:
    """A client of the local Redis; the test's queue is deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.delete(queue_name, f"{queue_name}-validate")


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, local_root: Path, queue_name: str
) -> Iterator[dict[str, str]]:
    """Point settings at this test's database, data dir, Redis queue and allowed root."""
    values = {
        "FTQ_DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": database_url,
        "BROKER_URL": REDIS_URL,
        "FTQ_QUEUE": queue_name,
        "FTQ_VALIDATE_QUEUE": f"{queue_name}-validate",
        "FTQ_LOCAL_ROOTS": str(local_root),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    clear_caches()
    yield values
    clear_caches()


@pytest.fixture
def api_key(env: dict[str, str]) -> str:
    """A fresh API key in the test database."""
    with session_scope() as session:
        _key, raw = create_api_key(session=session, name="tester")
        session.commit()
    return raw


def client_for(name: str, *, admin: bool = False) -> TestClient:
    """A client of the API (not yet started) holding a new key of user `name`."""
    with session_scope() as session:
        _key, raw = create_api_key(session=session, name=name, is_admin=admin)
        session.commit()
    return TestClient(create_app(), headers={"Authorization": f"Bearer {raw}"})


@contextmanager
def read_statements(containing: str) -> Iterator[list[str]]:
    """The statements the read routes (the asyncio engine) send meanwhile that contain `containing`."""
    engine = get_async_engine().sync_engine
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        if containing in statement:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
def client(env: dict[str, str], api_key: str) -> Iterator[TestClient]:
    """An authenticated client of the API."""
    with TestClient(create_app(), headers={"Authorization": f"Bearer {api_key}"}) as test_client:
        yield test_client


@pytest.fixture
def spec(tiny_model: Path, train_file: Path) -> dict[str, Any]:
    """The smallest valid spec: a local model and a local dataset."""
    return {"base_model": str(tiny_model), "dataset": {"id": str(train_file)}}


@contextmanager
def stack_client(
    database: str,
    data_dir: Path,
    local_root: Path,
    extra_env: dict[str, str] | None = None,
    gpus: list[str] | None = None,
) -> Iterator[StackClient]:
    """Run an API + GPU worker (one per entry of `gpus`) + validation worker on a fresh SQLite or PostgreSQL database
    (or on the database URL given) and the local Redis (queues of its own); yield a client holding a fresh key."""
    if database == "sqlite":
        url = f"sqlite:///{data_dir / 'ftq.db'}"
    elif "://" in database:
        url = database
    else:
        url = _create_postgres_db()
    env = {
        "FTQ_DATA_DIR": str(data_dir),
        "DATABASE_URL": url,
        "BROKER_URL": REDIS_URL,
        "FTQ_QUEUE": f"ftq-e2e-{uuid.uuid4().hex[:8]}",
        "FTQ_VALIDATE_QUEUE": f"ftq-e2e-validate-{uuid.uuid4().hex[:8]}",
        "FTQ_LOCAL_ROOTS": str(local_root),
        **(extra_env or {}),
    }
    upgrade_database(url)
    with session_scope(url) as session:
        _key, raw = create_api_key(session=session, name="e2e")
        session.commit()
    try:
        with running_stack(env, data_dir / "logs", gpus) as stack:
            with StackClient(stack, headers={"Authorization": f"Bearer {raw}"}) as client:
                yield client
    finally:
        clear_caches()
        if database == "postgres":
            _drop_postgres_db(url)


@pytest.fixture(scope="session")
def shared_stack(tmp_path_factory: pytest.TempPathFactory, local_root: Path) -> Iterator[StackClient]:
    """One SQLite stack for the modules that neither break nor reconfigure theirs: each signs in as a user of its
    own (`user_of`), so it sees only its own jobs; sharing saves each a stack's start and first imports. Its training
    worker is `gpu0` on this CPU box (a module may add `gpu1` beside it: `RunningStack.added_gpu_worker`)."""
    with stack_client("sqlite", tmp_path_factory.mktemp("stack-shared"), local_root, gpus=["0"]) as client:
        yield client


def user_of(stack: StackClient, name: str) -> StackClient:
    """A client of a running stack holding a key of user `name` (made if new)."""
    with session_scope(stack.stack.settings.db_url) as session:
        _key, raw = create_api_key(session=session, name=name)
        session.commit()
    return StackClient(stack.stack, headers={"Authorization": f"Bearer {raw}"})


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, local_root: Path, tiny_model: Path
) -> Iterator[StackClient]:
    """A running stack on SQLite (one training worker, the module's own) or PostgreSQL (the shared `pg_api`): each
    test runs on both."""
    if request.param == "postgres":
        yield request.getfixturevalue("pg_api")
        return
    with stack_client("sqlite", tmp_path_factory.mktemp("stack-sqlite"), local_root) as client:
        yield client


@pytest.fixture(scope="session")
def pg_api(tmp_path_factory: pytest.TempPathFactory, local_root: Path, tiny_model: Path) -> Iterator[StackClient]:
    """A running stack on PostgreSQL, the team setup, shared by the modules that break a part of it and mend it
    before they end (a killed worker restarted): each leaves it running with no job in flight."""
    with stack_client("postgres", tmp_path_factory.mktemp("stack-pg"), local_root) as client:
        yield client
