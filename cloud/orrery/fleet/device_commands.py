"""Commands an operator sends to devices (``orrery devices send``): run a workflow command,
change the config, reboot, cancel an install; and what became of each (``orrery commands``).

A send resolves its target (a device id, or a rollout's target expression: ``plan``) and
checks what it can before anything is signed: a command the devices' workflow does not have
(when the registry knows that workflow), a config change the board's own checks refuse
(``shared.config``). Then it signs one command per device (``commands.queue_many``), with ids
``op:<send>:<n>``, spread by its rate limit (``due_ms``: a reboot of 1,000 boards does not
restart them all in the same second; the limit holds across sends, as the last queued
operator command's due time is where the next send starts), and records who sent it
(``sent_by``). ``orrery serve`` publishes each one once it is due; a board that is offline gets
its command when it reconnects and pulls; its ack settles it (``commands.apply_acks``).
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.clock import iso, now_ms
from cloud.orrery.db.tables import COMMAND_BODIES, COMMANDS, DEVICES, WORKFLOWS
from cloud.orrery.fleet import commands
from cloud.orrery.fleet.rollout import plan
from shared import config as config_checks
from shared.wire import codec
from shared.workflow.program import Program

# what the operator writes -> the board's command kind (firmware/README.md, "Commands")
ACTIONS = {"run": "run_command", "config": "set_config", "reboot": "reboot", "cancel": "cancel"}
STATES = ("queued", "sent", "acked", "done", "failed", "refused", "expired", "canceled")
SOURCE = "operator"
DEFAULT_RATE = "100/min"


class CommandError(ValueError):
    """A send or a lookup was refused; the message says why, in one line."""


@dataclass
class Sent:
    """What a send queued: one command per device, in target order."""

    kind: str
    args: dict
    sent_by: str
    ids: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    offline: list[str] = field(default_factory=list)
    first_due: str | None = None
    last_due: str | None = None


# --- what the operator wrote -------------------------------------------------------------------


def command_args(action: str, params: list[str]) -> tuple[str, dict]:
    """``(kind, args)`` of the board command for ``action`` and its parameters; CommandError
    naming what is wrong (an unknown action, a missing or extra parameter, a bad
    ``KEY=VALUE``, a config change the board's checks refuse)."""
    kind = ACTIONS.get(action)
    if kind is None:
        raise CommandError(f"unknown command {action!r}: use {', '.join(ACTIONS)}")
    if action == "run":
        if len(params) != 1:
            raise CommandError("run takes one workflow command NAME, e.g. `run force_cool`")
        return kind, {"name": params[0]}
    if action == "config":
        if not params:
            raise CommandError("config takes KEY=VALUE changes, e.g. `config log_level=debug`")
        return kind, {"changes": parse_changes(params)}
    if action == "reboot":
        if params:
            raise CommandError(f"reboot takes nothing more, got {' '.join(params)!r}")
        return kind, {}
    if len(params) > 1:
        raise CommandError("cancel takes at most the id of the install command to cancel")
    return kind, ({"id": params[0]} if params else {})


_KEY = re.compile(r"[A-Za-z0-9_]{1,64}(\.[A-Za-z0-9_]{1,64})?")


def parse_changes(params: list[str]) -> dict:
    """``KEY=VALUE`` terms as a ``set_config``'s ``changes``, checked with the board's rules
    (``shared.config.check_changes``). ``broker.port=1883`` sets one key of a section; VALUE is
    JSON where it parses as JSON (``300``, ``true``, ``"300"``), else text; ``KEY=`` (nothing)
    removes the key."""
    changes: dict = {}
    for p in params:
        key, sep, text = p.partition("=")
        if not sep or not _KEY.fullmatch(key):
            raise CommandError(
                f"config: {p!r} is not KEY=VALUE (KEY a config key such as log_level or broker.port)"
            )
        value = None if text == "" else _value(text)
        section, _, sub = key.partition(".")
        into = changes
        if sub:
            into = changes.setdefault(section, {})
            if not isinstance(into, dict):
                raise CommandError(f"config: {key!r} and {section!r} both given")
        if (sub or key) in into:
            raise CommandError(f"config: {key!r} given twice")
        into[sub or key] = value
    errors = config_checks.check_changes(changes)
    if errors:
        raise CommandError("config: " + "; ".join(errors))
    return changes


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


# --- the target --------------------------------------------------------------------------------


def resolve(conn: Connection, target: str) -> list:
    """The devices (rows of ``plan.TARGET_COLS``) of a target: a device id, or a target
    expression (``all``, or ``FIELD=VALUE`` terms joined by ``,`` as for a rollout)."""
    if "=" in target or target.strip() in ("all", "*"):
        try:
            terms = plan.parse_target(target)
        except plan.RolloutError as exc:
            raise CommandError(str(exc).replace("--target: ", "target: ", 1)) from None
        rows = plan.select_devices(conn, terms)
        if not rows:
            raise CommandError(f"target {target!r} selects no device (see `orrery devices list`)")
        return rows
    rows = plan.select_devices(conn, [], DEVICES.c.name == target)
    if not rows:
        raise CommandError(f"unknown device {target!r} (see `orrery devices list`)")
    return rows


def check_command_name(conn: Connection, devices: list, name: str) -> None:
    """CommandError unless ``name`` is a command of every workflow the companion knows the
    ``devices`` run (a workflow it has no version of in the registry cannot be checked)."""
    lacking: dict[str, tuple[str, ...]] = {}
    for wf, ver in sorted({(d.wf, d.wf_ver) for d in devices if d.wf and d.wf_ver is not None}):
        blob = conn.execute(
            sa.select(WORKFLOWS.c.blob).where(WORKFLOWS.c.name == wf, WORKFLOWS.c.version == ver)
        ).scalar()
        if blob is None:
            continue
        names = Program(blob).command_names
        if name not in names:
            lacking[f"{wf}@{ver}"] = names
    if lacking:
        n = sum(1 for d in devices if f"{d.wf}@{d.wf_ver}" in lacking)
        which = "; ".join(
            f"{ref} (its commands: {', '.join(names) or 'none'})" for ref, names in lacking.items()
        )
        raise CommandError(
            f"run {name!r}: the workflow of {n} of the {len(devices)} target device(s) has no "
            f"such command: {which}"
        )


# --- sending -------------------------------------------------------------------------------------


def send(
    conn: Connection,
    secret: bytes,
    target: str,
    action: str,
    params: list[str],
    *,
    sent_by: str,
    rate: str = DEFAULT_RATE,
    ttl_s: int = 86400,
    now: int | None = None,
) -> Sent:
    """Check and queue ``action`` for every device of ``target``, signed for each board; the
    commands are published by ``orrery serve`` once due (``rate``: ``plan.parse_rate``).
    CommandError, with nothing queued, for any bad input."""
    kind, args = command_args(action, params)
    try:
        per_min = plan.parse_rate(rate)
    except plan.RolloutError as exc:
        raise CommandError(str(exc)) from None
    if not 60 <= ttl_s <= codec.MAX_LIFETIME:
        raise CommandError(f"--ttl: {ttl_s}s is outside 60s..{codec.MAX_LIFETIME // 86400}d")
    now = now_ms() if now is None else now
    devices = resolve(conn, target)
    if kind == "run_command":
        check_command_name(conn, devices, args["name"])
    due = _schedule(conn, len(devices), per_min, now)
    if due[-1] - now >= ttl_s * 1000:
        raise CommandError(
            f"--rate {rate}: the last of {len(devices)} command(s) would be due "
            f"{(due[-1] - now) // 60_000} min from now, after it expires (--ttl {ttl_s}s)"
        )
    send_id = secrets.token_hex(4)
    ids = [f"op:{send_id}:{i}" for i in range(1, len(devices) + 1)]
    commands.queue_many(
        conn, secret, [(d.id, d.name, d.fleet, cid) for d, cid in zip(devices, ids, strict=True)],
        kind=kind, args=args, source=SOURCE, now_ms=now, ttl_s=ttl_s, sent_by=sent_by,
        due_ms=due,
    )  # fmt: skip
    out = Sent(kind, args, sent_by, ids, [d.name for d in devices])
    out.offline = [d.name for d in devices if not d.online]
    out.first_due, out.last_due = iso(due[0]), iso(due[-1])
    return out


def _schedule(conn: Connection, n: int, per_min: int, now: int) -> list[int]:
    """When each of ``n`` commands may be published: ``per_min`` a minute, after the operator
    commands still queued (the limit holds across sends)."""
    gap = 60_000 / per_min
    last = conn.execute(
        sa.select(sa.func.max(COMMANDS.c.due_ms)).where(
            COMMANDS.c.source == SOURCE, COMMANDS.c.status == "queued"
        )
    ).scalar()
    start = now if last is None else max(now, last + gap)
    return [int(start + i * gap) for i in range(n)]


def _shown(kind: str, args: dict) -> dict:
    # a config change's values are not logged (a Wi-Fi or MQTT password may be among them)
    if kind == "set_config":
        return {"changes": sorted(args["changes"])}
    return args


# --- what became of them ---------------------------------------------------------------------


def _row(r) -> dict:
    args = commands.signed_args(r.envelope)
    return {
        "id": r.id,
        "device": r.name,
        "kind": r.kind,
        "args": _shown(r.kind, args) if r.source == SOURCE else None,
        "state": r.status,
        "result": None if r.ack_code is None else codec.ACK_NAMES.get(r.ack_code, str(r.ack_code)),
        "code": r.ack_code,
        "detail": r.ack_detail,
        "source": r.source,
        "sent_by": r.sent_by,
        "created": iso(r.created_ms),
        "due": iso(r.due_ms),
        "sent": iso(r.sent_ms),
        "sends": r.sends,
        "acked": iso(r.acked_ms),
        "expires": iso(r.exp * 1000),
    }


_COLS = (
    COMMANDS.c.id, COMMANDS.c.kind, COMMAND_BODIES.c.envelope, COMMANDS.c.status, COMMANDS.c.ack_code,
    COMMANDS.c.ack_detail, COMMANDS.c.source, COMMANDS.c.sent_by, COMMANDS.c.created_ms,
    COMMANDS.c.due_ms, COMMANDS.c.sent_ms, COMMANDS.c.sends, COMMANDS.c.acked_ms, COMMANDS.c.exp,
    DEVICES.c.name,
)  # fmt: skip
_FROM = COMMANDS.join(DEVICES, DEVICES.c.id == COMMANDS.c.device_id).join(
    COMMAND_BODIES, COMMAND_BODIES.c.id == COMMANDS.c.id
)


def _where(conn: Connection, device: str | None, state: str | None) -> list:
    cond = []
    if device is not None:
        did = conn.execute(sa.select(DEVICES.c.id).where(DEVICES.c.name == device)).scalar()
        if did is None:
            raise CommandError(f"unknown device {device!r} (see `orrery devices list`)")
        cond.append(COMMANDS.c.device_id == did)
    if state is not None:
        if state not in STATES:
            raise CommandError(f"--state {state!r}: use one of {', '.join(STATES)}")
        cond.append(COMMANDS.c.status == state)
    return cond


def listing(
    conn: Connection,
    device: str | None = None,
    state: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict]:
    """Commands, newest first (``limit`` of them, from ``offset``): of one device, in one
    state. CommandError for an unknown device or state."""
    q = sa.select(*_COLS).select_from(_FROM).where(*_where(conn, device, state))
    q = q.order_by(COMMANDS.c.created_ms.desc(), COMMANDS.c.id.desc()).limit(limit).offset(offset)
    return [_row(r) for r in conn.execute(q)]


def count(conn: Connection, device: str | None = None, state: str | None = None) -> int:
    """How many commands ``listing`` has to show in all; CommandError as ``listing``."""
    q = sa.select(sa.func.count()).select_from(COMMANDS).where(*_where(conn, device, state))
    return conn.execute(q).scalar_one()


def shown(kind: str, args: dict) -> dict:
    """A command's arguments as they may be shown: a config change's values are not."""
    return _shown(kind, args)


def show(conn: Connection, cmd_id: str) -> dict:
    """One command in full; CommandError if there is none with that id."""
    r = conn.execute(sa.select(*_COLS).select_from(_FROM).where(COMMANDS.c.id == cmd_id)).first()
    if r is None:
        raise CommandError(f"no command {cmd_id!r} (see `orrery commands list`)")
    return _row(r)
