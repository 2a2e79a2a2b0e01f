"""``/tokens``: the API's tokens (``orrery tokens create|list|revoke``); admin only. A token is
shown once, in the response that creates it; its hash never."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from cloud.orrery.api.auth import CallerDep, role
from cloud.orrery.api.deps import ReadConn, WriteConn
from cloud.orrery.api.errors import ApiError
from cloud.orrery.fleet import tokens

router = APIRouter(tags=["tokens"])


class TokenIn(BaseModel):
    """A token to create."""

    name: str = Field(min_length=1, max_length=64)
    role: Literal["viewer", "operator", "admin"]


class Token(BaseModel):
    """A token as listed (never its hash)."""

    id: int
    name: str
    role: str
    created: str | None
    created_by: str | None
    revoked: str | None
    revoked_by: str | None
    last_used: str | None


class NewToken(Token):
    """A created token, with the token itself: shown this once."""

    token: str


@router.post("/tokens", status_code=201, openapi_extra=role("admin"))
def create_token(body: TokenIn, conn: WriteConn, caller: CallerDep) -> NewToken:
    """Create a token; the response holds it, the only time it is shown."""
    try:
        token, row = tokens.create(conn, body.name, body.role, by=caller.name)
    except tokens.TokenExists as exc:
        raise ApiError(409, str(exc)) from None
    return NewToken(**row, token=token)


@router.get("/tokens", openapi_extra=role("admin"))
def list_tokens(conn: ReadConn) -> list[Token]:
    """Every token, revoked ones too."""
    return [Token(**r) for r in tokens.listing(conn)]


@router.post("/tokens/{ref}/revoke", openapi_extra=role("admin"))
def revoke_token(
    ref: Annotated[str, Path(min_length=1, max_length=64, description="Name or id.")],
    conn: WriteConn,
    caller: CallerDep,
) -> Token:
    """Revoke a token: refused (401) from now on. Revoking a revoked token changes nothing."""
    row, _ = tokens.revoke(conn, ref, by=caller.name)
    return Token(**row)
