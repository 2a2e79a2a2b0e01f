"""What the endpoints share: the database, pagination, and the page model of long lists."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Generic, TypeVar

import sqlalchemy as sa
from fastapi import Depends, Query, Request
from pydantic import BaseModel
from sqlalchemy.engine import Connection

MAX_LIMIT = 1000
T = TypeVar("T")


def engine(request: Request) -> sa.Engine:
    """The app's engine (``create_app``)."""
    return request.app.state.engine


def read_conn(request: Request) -> Iterator[Connection]:
    """A connection for a request that only reads."""
    with engine(request).connect() as conn:
        yield conn


def write_conn(request: Request) -> Iterator[Connection]:
    """A connection in a transaction, committed when the endpoint returns, rolled back when
    it raises."""
    with engine(request).begin() as conn:
        yield conn


ReadConn = Annotated[Connection, Depends(read_conn)]
WriteConn = Annotated[Connection, Depends(write_conn)]
Engine = Annotated[sa.Engine, Depends(engine)]


class Paging(BaseModel):
    """Which part of a long list: ``limit`` items from ``offset``."""

    limit: int
    offset: int


def paging(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page.")] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31, description="Items to skip.")] = 0,
) -> Paging:
    """The ``limit`` and ``offset`` query parameters."""
    return Paging(limit=limit, offset=offset)


PagingDep = Annotated[Paging, Depends(paging)]


def next_offset(p: Paging, total: int) -> int | None:
    """The offset of the next page, None on the last."""
    return p.offset + p.limit if p.offset + p.limit < total else None


class Page(BaseModel, Generic[T]):
    """A page of a long list: its ``items``, how many there are in all (``total``), and the
    ``offset`` of the next page (``next``; null on the last)."""

    items: list[T]
    total: int
    limit: int
    offset: int
    next: int | None


def page(items: list[T], total: int, p: Paging) -> Page[T]:
    """A ``Page`` of ``items`` (already sliced by ``p``)."""
    return Page(
        items=items, total=total, limit=p.limit, offset=p.offset, next=next_offset(p, total)
    )


# unix ms the database can hold and a person can mean: years 1970..9999
_MAX_MS = 253_402_300_799_999


def instant(text: str | None, name: str) -> int | None:
    """A time parameter (ISO 8601, naive = UTC, or unix seconds) as unix ms; None when not
    given; ApiError 400 naming ``name`` when it is neither, or outside years 1970..9999."""
    from cloud.orrery.api.errors import ApiError
    from cloud.orrery.clock import parse_instant

    if text is None:
        return None
    try:
        ms = parse_instant(text)
    except (ValueError, OverflowError):
        raise ApiError(
            400, f"{name}: {text!r} is neither ISO 8601 (2026-11-21T10:00:00) nor unix seconds"
        ) from None
    if not 0 <= ms <= _MAX_MS:
        raise ApiError(400, f"{name}: {text!r} is outside the years 1970..9999")
    return ms


def board_profile(name: str | None) -> dict | None:
    """A board profile of ``hw/boards`` by name (never a path: the API reads no file a caller
    names); None when not given; ApiError 400 naming the known ones."""
    from cloud.orrery.api.errors import ApiError
    from tools.board import profiles

    if name is None:
        return None
    known = profiles.known()
    if name not in known:
        raise ApiError(400, f"board {name!r}: no such profile (known: {', '.join(known)})")
    try:
        return profiles.load(profiles.BOARDS / f"{name}.json")
    except (profiles.ProfileError, OSError) as exc:
        raise ApiError(400, f"board {name!r}: {exc}") from None
