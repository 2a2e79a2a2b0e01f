"""Who calls the API, checked before anything else.

``Authorization: Bearer TOKEN`` on every ``/api/v1`` request but the OpenAPI document: no token,
or an unknown or revoked one, is 401; a token whose role is weaker than the endpoint's is 403.
This runs as ASGI middleware, before the request's path, query or body are looked at, so a
caller without a valid token learns nothing about them. Each endpoint states its role with
``role(...)`` (``x-orrery-role`` in the OpenAPI document); an endpoint that states none needs
``admin``. The caller reaches the endpoint as the ``CallerDep`` dependency: its token's name is
the actor of what it changes.

A web console mounted on the same app can reuse ``caller_for_token`` with a token kept in a
cookie, and ``ROLE_KEY`` to hide what a role may not do.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from cloud.orrery.api.errors import ApiError
from cloud.orrery.fleet import tokens
from cloud.orrery.fleet.tokens import Caller

API_PREFIX = "/api/v1"
OPENAPI_PATH = f"{API_PREFIX}/openapi.json"
PUBLIC = frozenset({OPENAPI_PATH})
ROLE_KEY = "x-orrery-role"

# documents the scheme in OpenAPI; the middleware has checked the token already
bearer = HTTPBearer(auto_error=False, description="A token from `orrery tokens create`.")


def role(name: str) -> dict[str, Any]:
    """``openapi_extra`` of an endpoint that needs role ``name`` (viewer, operator, admin)."""
    tokens.check_role(name)
    return {ROLE_KEY: name}


def caller_for_token(engine: sa.Engine, token: str) -> Caller | None:
    """The caller a token stands for (None: unknown or revoked), noting its use."""
    with engine.begin() as conn:
        return tokens.authenticate(conn, token)


def _bearer(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return ""
    return None


RoleTable = list[tuple[re.Pattern[str], frozenset[str], str]]


def role_table(routers: list[APIRouter]) -> RoleTable:
    """Each endpoint of ``routers`` (mounted under ``API_PREFIX``): its path pattern, methods
    and the role it needs (``role``; none stated: admin)."""
    table: RoleTable = []
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute):
                regex, _, _ = compile_path(API_PREFIX + route.path)
                need = (route.openapi_extra or {}).get(ROLE_KEY, "admin")
                table.append((regex, frozenset(route.methods or ()), need))
    return table


def _needed(table: RoleTable, scope: Scope) -> str | None:
    """The role the endpoint ``scope`` goes to needs; None when no endpoint matches (the
    router answers 404 or 405 then)."""
    method = "GET" if scope["method"] == "HEAD" else scope["method"]
    for regex, methods, need in table:
        if method in methods and regex.match(scope["path"]):
            return need
    return None


async def _refuse(send: Send, status: int, message: str) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AuthMiddleware:
    """Checks the bearer token and the endpoint's role of every API request (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(API_PREFIX) or path in PUBLIC:
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        if not token:
            await _refuse(
                send, 401,
                "no token: send the header 'Authorization: Bearer TOKEN' (`orrery tokens create`)"
                if token is None else "the Authorization header must be 'Bearer TOKEN'",
            )  # fmt: skip
            return
        app = scope["app"]
        try:
            caller = await run_in_threadpool(caller_for_token, app.state.engine, token)
        except sa.exc.SQLAlchemyError as exc:
            await _refuse(send, 503, f"database unavailable: {type(exc).__name__}")
            return
        if caller is None:
            await _refuse(send, 401, "unknown or revoked token")
            return
        need = _needed(app.state.roles, scope)
        if need is not None and not caller.may(need):
            await _refuse(
                send, 403, f"token {caller.name!r} has role {caller.role}; this needs {need}"
            )
            return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


def current_caller(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
) -> Caller:
    """The caller of this request (checked by ``AuthMiddleware``)."""
    caller = getattr(request.state, "caller", None)
    if caller is None:  # an app without the middleware: refuse rather than act as nobody
        raise ApiError(401, "no token")
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]
