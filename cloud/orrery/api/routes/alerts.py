"""``/alerts``: live alerts raised by ``orrery serve --alert`` rules (``orrery readings
alerts``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from cloud.orrery.api.auth import role
from cloud.orrery.api.deps import Page, PagingDep, ReadConn, page
from cloud.orrery.api.errors import ApiError
from cloud.orrery.fleet import devices
from cloud.orrery.ingest import queries

router = APIRouter(tags=["alerts"])


class Alert(BaseModel):
    """A live reading that crossed an alert rule."""

    id: int
    device: str
    rule: str
    boot: int
    seq: int
    value: int
    event_time: str | None
    created: str | None


@router.get("/alerts", openapi_extra=role("viewer"))
def list_alerts(
    conn: ReadConn,
    p: PagingDep,
    device: Annotated[str | None, Query(max_length=64, description="Only this device's.")] = None,
) -> Page[Alert]:
    """Alerts, newest first."""
    did = None
    if device is not None:
        did = devices.device_id(conn, device)
        if did is None:
            raise ApiError(404, f"unknown device {device!r}")
    rows, total = queries.alerts(conn, did, p.limit, p.offset)
    return page(rows, total, p)
