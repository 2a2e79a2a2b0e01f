"""The workflow registry: immutable versions and the diff between two of them.

A version is stored with its authoring JSON, its compiled device form and that form's hash.
Pushing the same content again is a no-op; different content under an existing name and
version is refused. Content means the compiled form: whitespace and key order don't count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.clock import iso
from cloud.orrery.db.tables import DEVICES, WORKFLOWS
from shared.workflow import compiler


class RegistryError(ValueError):
    """A registry operation was refused; the message says why."""


@dataclass
class Pushed:
    """The outcome of a push."""

    name: str
    version: int
    hash: str
    created: bool


def push(conn: Connection, text: bytes, profile: dict | None, now_ms: int) -> Pushed:
    """Validate, compile and store a workflow version; raise RegistryError or WorkflowError."""
    compiled = compiler.compile(text, profile)
    row = conn.execute(
        sa.select(WORKFLOWS.c.hash).where(
            WORKFLOWS.c.name == compiled.name, WORKFLOWS.c.version == compiled.version
        )
    ).first()
    if row is not None:
        if row.hash == compiled.hash:
            return Pushed(compiled.name, compiled.version, compiled.hash, False)
        raise RegistryError(
            f"{compiled.name}@{compiled.version} already exists with other content "
            f"(hash {row.hash[:12]}…, this is {compiled.hash[:12]}…): versions are immutable, "
            f"push it as version {latest(conn, compiled.name) + 1}"
        )
    conn.execute(
        sa.insert(WORKFLOWS),
        [
            {
                "name": compiled.name,
                "version": compiled.version,
                "hash": compiled.hash,
                "definition": text.decode("utf-8"),
                "blob": compiled.blob,
                "heap_bytes": compiled.heap_bytes,
                "created_ms": now_ms,
            }
        ],
    )
    return Pushed(compiled.name, compiled.version, compiled.hash, True)


def latest(conn: Connection, name: str) -> int:
    """The highest version of ``name`` (0 if none)."""
    return (
        conn.execute(
            sa.select(sa.func.max(WORKFLOWS.c.version)).where(WORKFLOWS.c.name == name)
        ).scalar()
        or 0
    )


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@VERSION``."""
    name, _, ver = ref.partition("@")
    if not name:
        raise RegistryError(f"{ref!r}: expected NAME or NAME@VERSION")
    if not ver:
        return name, None
    try:
        v = int(ver)
    except ValueError:
        raise RegistryError(f"{ref!r}: version must be an integer") from None
    return name, v


def get(conn: Connection, ref: str):
    """The workflow row for ``NAME@VER`` (or the latest of ``NAME``); RegistryError if absent."""
    name, ver = parse_ref(ref)
    q = sa.select(WORKFLOWS).where(WORKFLOWS.c.name == name)
    q = (
        q.where(WORKFLOWS.c.version == ver)
        if ver is not None
        else q.order_by(WORKFLOWS.c.version.desc())
    )
    row = conn.execute(q.limit(1)).first()
    if row is None:
        known = [
            f"{n}@{v}"
            for n, v in conn.execute(
                sa.select(WORKFLOWS.c.name, WORKFLOWS.c.version).where(WORKFLOWS.c.name == name)
            )
        ]
        raise RegistryError(
            f"no workflow {ref!r} in the registry"
            + (f" (known: {', '.join(known)})" if known else "")
        )
    return row


def versions(conn: Connection) -> list[dict]:
    """Every version in the registry by name and version, with how many devices run it."""
    running = {
        (n, v): c
        for n, v, c in conn.execute(
            sa.select(DEVICES.c.wf, DEVICES.c.wf_ver, sa.func.count()).group_by(
                DEVICES.c.wf, DEVICES.c.wf_ver
            )
        )
    }
    return [
        {
            "name": r.name,
            "version": r.version,
            "hash": r.hash,
            "heap_bytes": r.heap_bytes,
            "created": iso(r.created_ms),
            "devices": running.get((r.name, r.version), 0),
        }
        for r in conn.execute(sa.select(WORKFLOWS).order_by(WORKFLOWS.c.name, WORKFLOWS.c.version))
    ]


# --- diff ------------------------------------------------------------------------------------


def _index(defn: dict) -> dict:
    states = defn.get("states", {})
    if isinstance(states, list):
        states = {s.get("name"): s for s in states}
    trans = {}
    for sname, s in states.items():
        for i, t in enumerate(s.get("on", s.get("transitions", [])) or []):
            trans[f"{sname}#{i}"] = t
    params = {}
    keys = ("inputs", "vars", "variables", "outputs", "timers", "migrate", "safe_states")
    for key in (*keys, "safe_wait_s"):
        if key in defn:
            params[key] = defn[key]
    return {
        "states": {
            k: {kk: vv for kk, vv in v.items() if kk not in ("on", "transitions")}
            for k, v in states.items()
        },
        "transitions": trans,
        "parameters": params,
    }


def diff(a: dict, b: dict) -> dict:
    """What changed from definition ``a`` to ``b``: states, transitions and parameters, each as
    added / removed / changed keys (changed with both values)."""
    ia, ib = _index(a), _index(b)
    out = {}
    for part in ("states", "transitions", "parameters"):
        x, y = ia[part], ib[part]
        out[part] = {
            "added": {k: y[k] for k in sorted(set(y) - set(x))},
            "removed": {k: x[k] for k in sorted(set(x) - set(y))},
            "changed": {
                k: {"from": x[k], "to": y[k]} for k in sorted(set(x) & set(y)) if x[k] != y[k]
            },
        }
    return out


def definition(row) -> dict:
    """The authoring JSON of a registry row."""
    return json.loads(row.definition)
