"""The web console: server-rendered pages on the API's app (``/console``), for people.

Each page is one function of ``pages``; it reads through the same fleet functions as the API
and the CLI, and every action goes through them too, with the token's name as the actor. The
templates (Jinja2, autoescaped) and the few static files ship in this package: the console
works with no internet. ``mount(app)`` adds it to an app of ``create_app``.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles


def mount(app: FastAPI) -> None:
    """Add the console's pages (``/console``) and static files to ``app``."""
    from cloud.orrery.console import pages

    app.include_router(pages.router)
    app.mount("/console/static", StaticFiles(directory=pages.STATIC), name="console-static")
    pages.install(app)
