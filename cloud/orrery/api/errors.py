"""Every error the API returns: JSON ``{"error": "..."}`` naming what was wrong, with the status
that says whose fault it is: 400 bad input, 401 no valid token, 403 a role too weak, 404 no such
thing, 409 not in this state, 422 a malformed request (a path, query or body that does not
match the OpenAPI document). No input ends as a 500."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from cloud.orrery.fleet.device_commands import CommandError
from cloud.orrery.fleet.devices import DeviceError
from cloud.orrery.fleet.registry import RegistryError
from cloud.orrery.fleet.replay import SimulateError
from cloud.orrery.fleet.rollout.plan import RolloutError
from cloud.orrery.fleet.timeline import TimelineError
from cloud.orrery.fleet.tokens import TokenError
from shared.workflow.compiler import WorkflowError

log = logging.getLogger("orrery.api")

# the fleet layer's refusals; their messages are written for people already
FLEET_ERRORS: tuple[type[Exception], ...] = (
    CommandError, DeviceError, RegistryError, RolloutError, SimulateError, TimelineError,
    TokenError, WorkflowError,
)  # fmt: skip


class Error(BaseModel):
    """An error: what was wrong, in one line."""

    error: str


class ApiError(Exception):
    """An error response: ``status`` and the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "Bad input: the message names it."},
    401: {"model": Error, "description": "No token, or an unknown or revoked one."},
    403: {"model": Error, "description": "The token's role may not do this."},
    404: {"model": Error, "description": "No such device, rollout, version, command or token."},
    409: {"model": Error, "description": "Not possible in its current state."},
    422: {"model": Error, "description": "A malformed path, query or body."},
}


def fleet_error(exc: Exception, default: int = 400) -> ApiError:
    """A fleet-layer refusal as an ApiError: 404 when it says a thing does not exist (the
    fleet layer words those "no …" and "unknown device …"), else ``default``."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, WorkflowError):
        message = "; ".join(f"{path}: {reason}" for path, reason in exc.errors) or message
    if message.startswith(("no ", "unknown device ")):
        return ApiError(404, message)
    return ApiError(default, message)


def _json(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


def _where(loc: tuple) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("query", "path", "body", "header"):
        head, rest = parts[0], parts[1:]
        return f"{head} {'.'.join(rest)}" if rest else head
    return ".".join(parts)


def validation_message(exc: RequestValidationError) -> str:
    """The first few problems of a malformed request, each naming its place."""
    out = []
    for e in exc.errors()[:3]:
        msg = e.get("msg", "invalid")
        if e.get("type") == "json_invalid":
            msg = "not valid JSON"
        out.append(f"{_where(tuple(e.get('loc', ())))}: {msg}")
    return "; ".join(out) or "malformed request"


def install(app: FastAPI) -> None:
    """Make every error of ``app`` a JSON ``Error``."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _json(exc.status, exc.message)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint {request.url.path} (see /api/v1/openapi.json)"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return _json(exc.status_code, detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _json(422, validation_message(exc))

    for kind in FLEET_ERRORS:

        @app.exception_handler(kind)
        async def _fleet(request: Request, exc: Exception) -> JSONResponse:
            e = fleet_error(exc)
            return _json(e.status, e.message)

    @app.exception_handler(sa.exc.DataError)
    async def _data(request: Request, exc: sa.exc.DataError) -> JSONResponse:
        # a value the database cannot hold: a NUL character, a number out of range
        first = str(exc.orig).splitlines()[0] if exc.orig is not None else "bad value"
        return _json(400, f"a value the database cannot store: {first}")

    @app.exception_handler(OverflowError)
    async def _overflow(request: Request, exc: OverflowError) -> JSONResponse:
        return _json(400, f"a number out of range: {exc}")

    @app.exception_handler(sa.exc.OperationalError)
    async def _down(request: Request, exc: sa.exc.OperationalError) -> JSONResponse:
        log.warning("database error on %s %s: %s", request.method, request.url.path, exc)
        return _json(503, "database unavailable, try again")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _json(500, f"internal error: {type(exc).__name__}: {exc}")
