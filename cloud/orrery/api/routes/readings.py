"""Readings: a device's export (CSV or JSONL, scaled values and channel names), gaps and
losses, and per-device statistics (``orrery readings export|gaps|stats``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from cloud.orrery.api.auth import role
from cloud.orrery.api.deps import Page, PagingDep, ReadConn, instant, page
from cloud.orrery.api.errors import ApiError
from cloud.orrery.fleet import devices
from cloud.orrery.ingest import queries

router = APIRouter(tags=["readings"])

MEDIA = {"csv": "text/csv; charset=utf-8", "jsonl": "application/jsonl; charset=utf-8"}


class GapRow(BaseModel):
    """An open gap (may still arrive) or a permanent loss, with its reason."""

    device: str | None
    first: int
    last: int
    count: int
    kind: str
    status: str
    reason: str
    since: str | None


class DeviceStats(BaseModel):
    """One device's counters."""

    device: str
    received: int
    duplicates: int
    historical: int
    pending_gap: int
    permanent_loss: int
    conflicts: int
    bad_time: int
    gap_anomalies: int


class Stats(BaseModel):
    """Per device counters, their totals, and dead letters by reason."""

    devices: list[DeviceStats]
    totals: dict[str, int]
    dead_letters: dict[str, int]


@router.get(
    "/devices/{name}/readings",
    openapi_extra=role("viewer"),
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The readings: CSV with a header row, or JSONL.",
            "content": {m.split(";")[0]: {"schema": {"type": "string"}} for m in MEDIA.values()},
        }
    },
)
def export_readings(
    name: Annotated[str, Path(min_length=1, max_length=64, description="Device id.")],
    request: Request,
    conn: ReadConn,
    format: Annotated[Literal["csv", "jsonl"], Query(description="csv or jsonl.")] = "csv",
    since: Annotated[str | None, Query(max_length=64, description="From (event time).")] = None,
    until: Annotated[str | None, Query(max_length=64, description="Before (event time).")] = None,
) -> StreamingResponse:
    """A device's readings in event-time order (those without a time anchor last), each with
    its channel's name and its value scaled to the channel's unit. Streamed."""
    lo, hi = instant(since, "since"), instant(until, "until")
    did = devices.device_id(conn, name)
    if did is None:
        raise ApiError(404, f"unknown device {name!r}")
    profile = devices.profile_of(conn, did)
    engine = request.app.state.engine

    def lines() -> Iterator[bytes]:
        # its own connection: the request's is closed once the endpoint returns
        with engine.connect() as c:
            for line in queries.export_lines(c, did, format, lo, hi, profile):
                yield line.encode()

    return StreamingResponse(lines(), media_type=MEDIA[format])


@router.get("/readings/gaps", openapi_extra=role("viewer"))
def gaps(
    conn: ReadConn,
    p: PagingDep,
    device: Annotated[str | None, Query(max_length=64, description="Only this device.")] = None,
) -> Page[GapRow]:
    """Open gaps (may still arrive), then permanent losses, each with its reason."""
    did = None
    if device is not None:
        did = devices.device_id(conn, device)
        if did is None:
            raise ApiError(404, f"unknown device {device!r}")
    rows = queries.gaps_and_losses(conn, did)
    return page(rows[p.offset : p.offset + p.limit], len(rows), p)


@router.get("/readings/stats", openapi_extra=role("viewer"))
def stats(conn: ReadConn) -> Stats:
    """Per device: received, duplicates, historical, pending gap, permanent loss, conflicts,
    readings without a true event time, gap anomalies; dead letters by reason."""
    return Stats(**queries.stats(conn))
