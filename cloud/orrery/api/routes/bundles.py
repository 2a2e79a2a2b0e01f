"""``/bundles``: the app bundle registry (``orrery bundle push|list|show|diff``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from cloud.orrery.api.auth import CallerDep, role
from cloud.orrery.api.deps import Page, PagingDep, ReadConn, engine, page
from cloud.orrery.api.errors import ApiError, fleet_error
from cloud.orrery.clock import now_ms
from cloud.orrery.fleet import bundles
from cloud.orrery.fleet.registry import RegistryError
from tools.board import bundle as bundle_file

router = APIRouter(tags=["bundles"])

MAX_BUNDLE = 4 * 1024 * 1024
RefPath = Annotated[str, Path(min_length=1, max_length=140, description="NAME or NAME@VERSION.")]


class Bundle(BaseModel):
    """A bundle version (without its bytes), and how many devices run it."""

    name: str
    version: str
    sha256: str
    size: int
    profile: str
    mpy_version: str
    source_hash: str
    files: int
    created: str | None
    created_by: str | None
    devices: int


class BundleDetail(Bundle):
    """A version with its manifest (its files, with their sha256 and size)."""

    built: Any = None
    manifest: dict[str, Any]


class BundlePushed(BaseModel):
    """A pushed version; ``created`` false: it was there already with these bytes."""

    name: str
    version: str
    sha256: str
    size: int
    created: bool


class FileChange(BaseModel):
    """A file added, removed or changed between two versions."""

    path: str
    size: int | None = None
    from_size: int | None = None
    to_size: int | None = None


class BundleDiff(BaseModel):
    """What changed between two versions; a property that did not change is null."""

    model_config = {"populate_by_name": True}

    from_: str = Field(alias="from")
    to: str
    added: list[FileChange]
    removed: list[FileChange]
    changed: list[FileChange]
    unchanged: int
    size: dict[str, Any] | None
    profile: dict[str, Any] | None
    mpy_version: dict[str, Any] | None
    source_hash: dict[str, Any] | None


@router.get("/bundles", openapi_extra=role("viewer"))
def list_bundles(conn: ReadConn, p: PagingDep) -> Page[Bundle]:
    """Every bundle version, by name, oldest first."""
    rows = bundles.versions(conn)
    return page(rows[p.offset : p.offset + p.limit], len(rows), p)


@router.get("/bundles/{ref}", openapi_extra=role("viewer"))
def show_bundle(ref: RefPath, conn: ReadConn) -> BundleDetail:
    """A version's manifest: what it was built from and for, and its files."""
    row = bundles.get(conn, ref, with_data=False)
    m = bundles.manifest(row)
    return BundleDetail(**bundles.summary(row, bundles.running(conn)), built=m.get("built"),
                        manifest=m)  # fmt: skip


@router.get("/bundles/{a}/diff/{b}", openapi_extra=role("viewer"))
def diff_bundles(a: RefPath, b: RefPath, conn: ReadConn) -> BundleDiff:
    """What changed from version ``a`` to ``b``: files, and the profile, .mpy version and
    sources they were built from."""
    ra, rb = bundles.get(conn, a, with_data=False), bundles.get(conn, b, with_data=False)
    d = bundles.diff(bundles.manifest(ra), bundles.manifest(rb))
    return BundleDiff(**d)


@router.post(
    "/bundles",
    openapi_extra={
        **role("operator"),
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
    },
)
async def push_bundle(request: Request, caller: CallerDep) -> BundlePushed:
    """Store a bundle file (``orrery bundle build`` writes one; the request body is its bytes)
    as an immutable version: the same bytes again is a no-op, other bytes under an existing
    version are refused (409)."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BUNDLE:
            raise ApiError(400, f"a bundle file is at most {MAX_BUNDLE} bytes")
    try:
        built = bundle_file.decode(bytes(data))
    except bundle_file.BundleError as exc:
        raise ApiError(400, f"body: {exc}") from None

    def push() -> bundles.Pushed:
        with engine(request).begin() as conn:
            return bundles.push(conn, built.data, built.manifest, now_ms(), by=caller.name)

    try:
        res = await run_in_threadpool(push)
    except RegistryError as exc:
        raise fleet_error(exc, 409) from None
    return BundlePushed(**res.__dict__)
