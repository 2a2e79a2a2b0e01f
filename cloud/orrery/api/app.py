"""The API application: ``create_app(db_url)`` builds it on a database; every request opens
its own connection from the engine's pool, so several API processes can serve one database.

Routers live in ``cloud/orrery/api/routes/<resource>.py``, each mounted under ``/api/v1``; a
server-rendered console can be mounted on the same app (its own router) and reuse ``auth``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI

from cloud.orrery.api import auth, errors
from cloud.orrery.api.routes import (
    alerts,
    bundles,
    commands,
    dead_letters,
    devices,
    readings,
    rollouts,
    tokens,
    workflows,
)
from cloud.orrery.db.engine import engine_for

ROUTERS = (devices, readings, workflows, bundles, rollouts, commands, dead_letters, alerts, tokens)


def _version() -> str:
    try:
        return version("orrery")
    except PackageNotFoundError:
        return "0"


def create_app(
    db_url: str | None = None, engine: sa.Engine | None = None, console: bool = True
) -> FastAPI:
    """The API on the database at ``db_url`` (see ``engine_for``; migrated, never created), or
    on ``engine``; with the web console at ``/console`` unless ``console`` is false."""
    app = FastAPI(
        title="Orrery API",
        version=_version(),
        description="The Orrery fleet: devices, readings, workflows, bundles, rollouts, "
        "commands. Every request carries `Authorization: Bearer TOKEN` (`orrery tokens "
        "create`); each operation's `x-orrery-role` says which role it needs.",
        openapi_url=auth.OPENAPI_PATH,
        docs_url=None,  # the Swagger page loads its assets from a CDN; the console is offline
        redoc_url=None,
    )
    app.state.engine = engine if engine is not None else engine_for(db_url, create=False)
    errors.install(app)
    app.add_middleware(auth.AuthMiddleware)
    api = APIRouter(
        prefix=auth.API_PREFIX,
        responses=errors.ERROR_RESPONSES,
        dependencies=[Depends(auth.bearer)],
    )
    for module in ROUTERS:
        api.include_router(module.router)
    app.include_router(api)
    app.state.roles = auth.role_table([m.router for m in ROUTERS])
    if console:
        from cloud.orrery import console as web

        web.mount(app)
    return app
