"""``/commands``: commands to devices, and what became of them (``orrery devices send``,
``orrery commands list|show``). A command's sender is the token's name."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from cloud.orrery.api.auth import CallerDep, role
from cloud.orrery.api.deps import Page, PagingDep, ReadConn, WriteConn, page
from cloud.orrery.api.errors import ApiError
from cloud.orrery.fleet import device_commands, keys
from cloud.orrery.fleet.rollout.plan import RolloutError, parse_duration

router = APIRouter(tags=["commands"])


class CommandIn(BaseModel):
    """A command for a device or for every device of a target expression."""

    target: str = Field(
        min_length=1, max_length=2000,
        description="A device id, or all, or FIELD=VALUE terms joined by ',' (fleet, profile, "
        "fw, wf, device, tag.KEY), as for a rollout.",
    )  # fmt: skip
    command: str = Field(max_length=16, description="run, config, reboot or cancel.")
    params: list[Annotated[str, Field(max_length=500)]] = Field(
        default=[], max_length=100,
        description="NAME for run; KEY=VALUE… for config (KEY= removes); ID for cancel.",
    )  # fmt: skip
    rate: str = Field(default=device_commands.DEFAULT_RATE, max_length=20)
    ttl: str = Field(default="24h", max_length=20, description="Lifetime: 90s, 10m, 24h, 7d.")


class SentOut(BaseModel):
    """What a send queued: one command per device (``ids``, in ``devices`` order)."""

    kind: str
    args: dict[str, Any]
    sent_by: str
    ids: list[str]
    devices: list[str]
    offline: list[str]
    first_due: str | None
    last_due: str | None


class CommandRow(BaseModel):
    """A command and what became of it."""

    id: str
    device: str
    kind: str
    args: dict[str, Any] | None
    state: str
    result: str | None
    code: int | None
    detail: str | None
    source: str
    sent_by: str | None
    created: str | None
    due: str | None
    sent: str | None
    sends: int
    acked: str | None
    expires: str | None


@router.post("/commands", status_code=201, openapi_extra=role("operator"))
def send_command(body: CommandIn, conn: WriteConn, caller: CallerDep) -> SentOut:
    """Queue a command, signed for each board, spread by ``rate``; ``orrery serve`` delivers
    it (offline boards get it when they reconnect)."""
    try:
        ttl_s = parse_duration(body.ttl, "ttl")
    except RolloutError as exc:
        raise ApiError(400, str(exc)) from None
    try:
        secret = keys.load_secret()
    except keys.SecretError as exc:
        raise ApiError(409, f"the API has no fleet secret to sign with: {exc}") from None
    sent = device_commands.send(conn, secret, body.target, body.command, body.params,
                                sent_by=caller.name, rate=body.rate, ttl_s=ttl_s)  # fmt: skip
    return SentOut(**{**sent.__dict__, "args": device_commands.shown(sent.kind, sent.args)})


@router.get("/commands", openapi_extra=role("viewer"))
def list_commands(
    conn: ReadConn,
    p: PagingDep,
    device: Annotated[str | None, Query(max_length=64, description="Only this device's.")] = None,
    state: Annotated[
        str | None, Query(max_length=16, description=", ".join(device_commands.STATES))
    ] = None,
) -> Page[CommandRow]:
    """Commands, newest first: state, the board's result, who sent them."""
    rows = device_commands.listing(conn, device, state, p.limit, p.offset)
    return page(rows, device_commands.count(conn, device, state), p)


@router.get("/commands/{command_id}", openapi_extra=role("viewer"))
def show_command(
    command_id: Annotated[str, Path(min_length=1, max_length=100)], conn: ReadConn
) -> CommandRow:
    """One command in full."""
    return CommandRow(**device_commands.show(conn, command_id))
