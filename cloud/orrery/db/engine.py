"""Database engines: the URL, SQLite or PostgreSQL, and Alembic migrations to the newest schema.

SQLite (a file, WAL) by default; PostgreSQL by URL, with the same code. The URL comes from
``--db`` or ``ORRERY_DB_URL``; the default is ``sqlite:///orrery.db``. Opening a database
migrates it (Alembic, ``cloud/orrery/db/migrations``). A SQLite file is created only when the
caller says so (``create``): a command that reads never leaves an empty database behind a
mistyped path.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event

DEFAULT_URL = "sqlite:///orrery.db"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def url_from(url: str | None) -> str:
    """The database URL: ``url``, else ``ORRERY_DB_URL``, else ``sqlite:///orrery.db``.

    ``postgresql://`` URLs get the psycopg 3 driver.
    """
    url = url or os.environ.get("ORRERY_DB_URL") or DEFAULT_URL
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at each commit's checkpoint
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class NoDatabase(ValueError):
    """The database does not exist (and the caller may not create it), or cannot be a file."""


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (relative to the working directory, as SQLite opens it); None
    for an in-memory database or another backend."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _check_sqlite_file(full: str, create: bool) -> None:
    path = sqlite_file(full)
    if path is None:
        return
    if path.is_dir():
        raise NoDatabase(f"database {describe(full)}: {path} is a directory")
    if path.exists():
        return
    if not create:
        raise NoDatabase(
            f"no database at {path.absolute()} ({describe(full)}): give --db or set ORRERY_DB_URL"
        )
    if not path.absolute().parent.is_dir():
        raise NoDatabase(
            f"database {describe(full)}: no directory {path.absolute().parent} to create it in"
        )


def engine_for(url: str | None = None, *, migrate: bool = True, create: bool = True) -> sa.Engine:
    """Create the engine for ``url`` (see ``url_from``) and migrate the schema to head.

    ``create`` False: a SQLite file that does not exist is ``NoDatabase``, not a new database.
    """
    full = url_from(url)
    try:
        backend = sa.engine.make_url(full).get_backend_name()
    except sa.exc.ArgumentError:
        raise ValueError(
            f"bad database URL {describe(full)!r}: expected sqlite:///FILE or postgresql://..."
        ) from None
    if backend not in ("sqlite", "postgresql"):
        raise ValueError(
            f"unsupported database {backend!r} in {describe(full)!r}: use SQLite or PostgreSQL"
        )
    try:
        engine = sa.create_engine(full, future=True, pool_pre_ping=True)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise ValueError(f"bad database URL {describe(full)!r}: {exc}") from None
    if backend == "sqlite":
        _check_sqlite_file(full, create)
        event.listen(engine, "connect", _sqlite_pragmas)
    if migrate:
        upgrade(engine)
    return engine


def alembic_config(engine: sa.Engine):
    """An Alembic Config that runs this package's migrations on ``engine``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Migrate the schema to ``revision``; on PostgreSQL under an advisory lock, so several
    companions starting together migrate once."""
    from alembic import command

    cfg = alembic_config(engine)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(7316001)"))
            try:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                conn.commit()
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(7316001)"))
                conn.commit()
    else:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)


def describe(url: str) -> str:
    """``url`` without its password, for logs and errors."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable URL>"
