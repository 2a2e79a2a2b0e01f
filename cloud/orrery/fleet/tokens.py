"""API tokens (``orrery tokens``, ``orrery api``): named bearer tokens with a role.

A token is ``orrery_`` and 32 random bytes (base64url); only its sha256 is stored, so a token is
shown once, when it is created. Roles are ordered: ``viewer`` reads, ``operator`` also runs
rollouts and sends commands, ``admin`` also manages tokens, devices and broker secrets. A
revoked token keeps its row (who revoked it, when) and is refused from then on.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.clock import iso, now_ms
from cloud.orrery.db.tables import API_TOKENS

ROLES = ("viewer", "operator", "admin")
PREFIX = "orrery_"
# ``last_used`` is written at most this often per token: a busy client does not write a row
# on every request
TOUCH_EVERY_MS = 60_000
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


class TokenError(ValueError):
    """A token name, role or reference that is not valid, or a token that does not exist."""


class TokenExists(TokenError):
    """A token of that name exists already (revoked tokens keep their names)."""


@dataclass(frozen=True)
class Caller:
    """Who calls the API: the token's name (the actor in the audit log) and role."""

    name: str
    role: str

    def may(self, role: str) -> bool:
        """Whether this caller's role is ``role`` or stronger."""
        return ROLES.index(self.role) >= ROLES.index(role)


def token_hash(token: str) -> str:
    """The stored form of a token: its sha256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def check_role(role: str) -> str:
    """``role`` if it is one of ``ROLES``; TokenError naming them if not."""
    if role not in ROLES:
        raise TokenError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    return role


def _row(r) -> dict:
    # what a listing shows of a token: never its hash
    return {
        "id": r.id,
        "name": r.name,
        "role": r.role,
        "created": iso(r.created_ms),
        "created_by": r.created_by,
        "revoked": iso(r.revoked_ms),
        "revoked_by": r.revoked_by,
        "last_used": iso(r.last_used_ms),
    }


def create(conn: Connection, name: str, role: str, by: str | None) -> tuple[str, dict]:
    """Create a token; return it (the only time it is seen) and its listing row. TokenError
    for a bad name or role, or a name already taken (revoked tokens keep theirs)."""
    if not _NAME.fullmatch(name):
        raise TokenError(f"token name {name!r}: expected 1..64 chars of [A-Za-z0-9_.@-]")
    check_role(role)
    if conn.execute(sa.select(API_TOKENS.c.id).where(API_TOKENS.c.name == name)).first():
        raise TokenExists(f"a token named {name!r} exists already (see `orrery tokens list`)")
    token = PREFIX + secrets.token_urlsafe(32)
    tid = conn.execute(
        sa.insert(API_TOKENS).returning(API_TOKENS.c.id),
        [{"name": name, "role": role, "hash": token_hash(token), "created_ms": now_ms(),
          "created_by": by}],
    ).scalar_one()  # fmt: skip
    return token, _row(conn.execute(sa.select(API_TOKENS).where(API_TOKENS.c.id == tid)).one())


def listing(conn: Connection) -> list[dict]:
    """Every token (revoked ones too), oldest first, without hashes."""
    return [_row(r) for r in conn.execute(sa.select(API_TOKENS).order_by(API_TOKENS.c.id))]


def _find(conn: Connection, ref: str):
    q = sa.select(API_TOKENS)
    cond = API_TOKENS.c.name == ref
    if ref.isdigit() and len(ref) < 10:
        cond = cond | (API_TOKENS.c.id == int(ref))
    rows = conn.execute(q.where(cond).order_by(API_TOKENS.c.name == ref)).all()
    if not rows:
        raise TokenError(f"no token {ref!r} (see `orrery tokens list`)")
    return rows[-1]  # a name matches before an id


def revoke(conn: Connection, ref: str, by: str | None) -> tuple[dict, bool]:
    """Revoke the token named ``ref`` (or with id ``ref``); return its row and whether it was
    revoked now (False: it was already). TokenError if there is no such token."""
    r = _find(conn, ref)
    if r.revoked_ms is not None:
        return _row(r), False
    conn.execute(
        sa.update(API_TOKENS)
        .where(API_TOKENS.c.id == r.id)
        .values(revoked_ms=now_ms(), revoked_by=by)
    )
    return _row(conn.execute(sa.select(API_TOKENS).where(API_TOKENS.c.id == r.id)).one()), True


def authenticate(conn: Connection, token: str) -> Caller | None:
    """The caller a token stands for, or None if it is unknown or revoked. Notes its use
    (``last_used``, at most once a minute)."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    r = conn.execute(
        sa.select(API_TOKENS.c.id, API_TOKENS.c.name, API_TOKENS.c.role, API_TOKENS.c.revoked_ms,
                  API_TOKENS.c.last_used_ms).where(API_TOKENS.c.hash == token_hash(token))
    ).first()  # fmt: skip
    if r is None or r.revoked_ms is not None:
        return None
    now = now_ms()
    if r.last_used_ms is None or now - r.last_used_ms >= TOUCH_EVERY_MS:
        conn.execute(sa.update(API_TOKENS).where(API_TOKENS.c.id == r.id).values(last_used_ms=now))
    return Caller(r.name, r.role)
