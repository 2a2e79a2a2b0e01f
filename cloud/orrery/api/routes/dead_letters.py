"""``/dead-letters``: messages the ingest could not accept, and why (``orrery readings
dead-letters``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from cloud.orrery.api.auth import role
from cloud.orrery.api.deps import Page, PagingDep, ReadConn, page
from cloud.orrery.ingest import queries

router = APIRouter(tags=["dead letters"])


class DeadLetter(BaseModel):
    """A refused message: where it came from, why, and its size (never its payload)."""

    id: int
    received: str | None
    topic: str
    device: str | None
    reason: str
    size: int


@router.get("/dead-letters", openapi_extra=role("viewer"))
def list_dead_letters(
    conn: ReadConn,
    p: PagingDep,
    device: Annotated[str | None, Query(max_length=64, description="Only this device's.")] = None,
    reason: Annotated[
        str | None, Query(max_length=300, description="Only reasons starting with this.")
    ] = None,
) -> Page[DeadLetter]:
    """Dead letters, newest first."""
    rows, total = queries.dead_letters(conn, device, reason, p.limit, p.offset)
    return page(rows, total, p)
