"""A fresh PostgreSQL database per test, on the server at ``ORRERY_TEST_PG_URL``
(default ``postgresql://postgres@127.0.0.1:5432/test``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"


def server_url() -> str:
    """The PostgreSQL server the tests use."""
    return os.environ.get("ORRERY_TEST_PG_URL") or DEFAULT


def unreachable() -> str | None:
    """Why PostgreSQL can't be used here, or None when it can."""
    url = server_url().replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        e = sa.create_engine(url, connect_args={"connect_timeout": 3})
        with e.connect() as c:
            c.execute(sa.text("SELECT 1"))
        e.dispose()
    except Exception as exc:  # any reason at all: report it
        return f"PostgreSQL not reachable at {server_url()}: {str(exc).splitlines()[0][:200]}"
    return None


@contextmanager
def fresh_database() -> Iterator[str]:
    """Create an empty database, yield its URL, drop it afterwards."""
    base = sa.engine.make_url(server_url().replace("postgresql://", "postgresql+psycopg://", 1))
    name = f"orrery_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
