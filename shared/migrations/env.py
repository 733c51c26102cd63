"""Alembic environment: runs ftq's migrations against the URL handed in by `shared.migrate`."""

from alembic import context
from sqlalchemy import create_engine

from shared.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url, "shared.migrate sets sqlalchemy.url"

engine = create_engine(url)
with engine.connect() as connection:
    # render_as_batch: SQLite can only ALTER tables by copying them, which batch mode does for us.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
