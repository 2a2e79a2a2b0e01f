"""Who uses the console: a token given once on the login form, then kept in an HttpOnly,
SameSite=Strict cookie (the console keeps no state of its own, so several processes can serve
it, as they serve the API). Every form that changes something carries a token derived from the
cookie's (``csrf``): a page of another site can neither read it nor send the cookie along."""

from __future__ import annotations

import hashlib
import hmac

import sqlalchemy as sa
from fastapi import Request

from cloud.orrery.api.auth import caller_for_token
from cloud.orrery.fleet.tokens import Caller

COOKIE = "orrery_console"
PATH = "/console"


class LoginNeeded(Exception):
    """No valid token in the cookie: the page sends the browser to the login form."""


class Forbidden(Exception):
    """The token's role may not do this (or the form's csrf token is wrong)."""


def csrf_for(token: str) -> str:
    """The form token of a session: derived from its API token, so no server state holds it."""
    return hmac.new(token.encode(), b"orrery-console-csrf", hashlib.sha256).hexdigest()[:32]


def caller(request: Request) -> Caller:
    """The caller whose token the cookie holds; LoginNeeded when there is none, or it is
    unknown or revoked."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise LoginNeeded
    engine: sa.Engine = request.app.state.engine
    who = caller_for_token(engine, token)
    if who is None:
        raise LoginNeeded
    request.state.caller = who
    request.state.csrf = csrf_for(token)
    return who


def check_action(request: Request, form: dict[str, str], need: str = "operator") -> Caller:
    """The caller of a POST that changes something: a valid cookie, the form's csrf token, and
    a role of at least ``need``; Forbidden (or LoginNeeded) otherwise."""
    who = caller(request)
    if not hmac.compare_digest(form.get("csrf", ""), request.state.csrf):
        raise Forbidden("the form is stale or did not come from this console: reload the page")
    if not who.may(need):
        raise Forbidden(f"token {who.name!r} has role {who.role}; this needs {need}")
    return who
