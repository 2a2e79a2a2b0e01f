"""``/workflows``: workflow definitions and the registry of their versions (``orrery workflow
validate|push|list|show|diff|simulate``)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from cloud.orrery.api.auth import role
from cloud.orrery.api.deps import Page, PagingDep, ReadConn, WriteConn, board_profile, instant, page
from cloud.orrery.clock import now_ms
from cloud.orrery.fleet import registry, replay
from shared.workflow import compiler

router = APIRouter(tags=["workflows"])

RefPath = Annotated[str, Path(min_length=1, max_length=140, description="NAME or NAME@VERSION.")]
BoardField = Field(default=None, max_length=64, description="Board profile (hw/boards) name.")


class Definition(BaseModel):
    """A workflow definition (its authoring JSON) and the board profile to check it against."""

    definition: dict[str, Any]
    board: str | None = BoardField


class Problem(BaseModel):
    """One validation error: where (a path in the definition) and why."""

    path: str
    reason: str


class Validation(BaseModel):
    """Whether a definition is valid, and every problem it has."""

    ok: bool
    errors: list[Problem]


class Pushed(BaseModel):
    """A pushed version; ``created`` false: it was there already with this content."""

    name: str
    version: int
    hash: str
    created: bool


class Version(BaseModel):
    """A version in the registry, and how many devices run it."""

    name: str
    version: int
    hash: str
    heap_bytes: int
    created: str | None
    devices: int


class VersionDetail(BaseModel):
    """A version's definition and hash."""

    name: str
    version: int
    hash: str
    heap_bytes: int
    definition: dict[str, Any]


class Changes(BaseModel):
    """Keys added, removed and changed (with both values) in one part of a definition."""

    added: dict[str, Any]
    removed: dict[str, Any]
    changed: dict[str, Any]


class Diff(BaseModel):
    """What changed between two versions."""

    a: str
    b: str
    states: Changes
    transitions: Changes
    parameters: Changes


class SimulateIn(BaseModel):
    """Whose stored readings to replay, and which of them (event time)."""

    device: str = Field(min_length=1, max_length=64)
    since: str | None = Field(default=None, max_length=64)
    until: str | None = Field(default=None, max_length=64)


class Simulation(BaseModel):
    """What the version would have done with the readings (``preview``), what the running
    version did (``running``), and the board's own events."""

    device: str
    readings: int
    preview: dict[str, Any]
    running: dict[str, Any] | None
    board_events: list[dict[str, Any]]


def _source(d: Definition) -> bytes:
    return json.dumps(d.definition, indent=2, ensure_ascii=False).encode()


@router.post("/workflows/validate", openapi_extra=role("viewer"))
def validate_workflow(body: Definition) -> Validation:
    """Validate a definition with the board's own validator; errors name the path and reason."""
    errs = compiler.errors(_source(body), board_profile(body.board))
    return Validation(ok=not errs, errors=[Problem(path=p, reason=r) for p, r in errs])


@router.post("/workflows", openapi_extra=role("operator"))
def push_workflow(body: Definition, conn: WriteConn) -> Pushed:
    """Store an immutable version: identical content is a no-op (``created`` false), other
    content under an existing version is refused (409)."""
    profile = board_profile(body.board)
    try:
        res = registry.push(conn, _source(body), profile, now_ms())
    except registry.RegistryError as exc:
        from cloud.orrery.api.errors import fleet_error

        raise fleet_error(exc, 409) from None
    return Pushed(**res.__dict__)


@router.get("/workflows", openapi_extra=role("viewer"))
def list_workflows(conn: ReadConn, p: PagingDep) -> Page[Version]:
    """Every version in the registry, with how many devices run it."""
    rows = registry.versions(conn)
    return page(rows[p.offset : p.offset + p.limit], len(rows), p)


@router.get("/workflows/{ref}", openapi_extra=role("viewer"))
def show_workflow(ref: RefPath, conn: ReadConn) -> VersionDetail:
    """A version's definition and hash (NAME: its newest version)."""
    row = registry.get(conn, ref)
    return VersionDetail(name=row.name, version=row.version, hash=row.hash,
                         heap_bytes=row.heap_bytes, definition=registry.definition(row))  # fmt: skip


@router.get("/workflows/{a}/diff/{b}", openapi_extra=role("viewer"))
def diff_workflows(a: RefPath, b: RefPath, conn: ReadConn) -> Diff:
    """What changed from version ``a`` to ``b``: states, transitions, parameters."""
    ra, rb = registry.get(conn, a), registry.get(conn, b)
    d = registry.diff(registry.definition(ra), registry.definition(rb))
    return Diff(a=f"{ra.name}@{ra.version}", b=f"{rb.name}@{rb.version}", **d)


@router.post("/workflows/{ref}/simulate", openapi_extra=role("viewer"))
def simulate_workflow(ref: RefPath, body: SimulateIn, conn: ReadConn) -> Simulation:
    """Replay a device's stored readings through this version, beside what the running version
    did: a preview that changes nothing."""
    lo, hi = instant(body.since, "since"), instant(body.until, "until")
    return Simulation(**replay.simulate(conn, ref, body.device, lo, hi))
