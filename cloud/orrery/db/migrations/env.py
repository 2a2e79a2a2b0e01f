"""Alembic environment: runs on the connection ``cloud.orrery.db.engine.upgrade`` hands over."""

from alembic import context
from sqlmodel import SQLModel

from cloud.orrery.db import models  # noqa: F401  (registers the tables)
from cloud.orrery.db.engine import engine_for

target_metadata = SQLModel.metadata
config = context.config
connection = config.attributes.get("connection")

if connection is None:
    engine = config.attributes.get("engine") or engine_for(None, migrate=False)
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
