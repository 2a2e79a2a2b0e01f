"""The workflow state a device last reported (``devices show``), across boots whose ids are
random: the newest boot is the one the companion saw last, not the largest id."""

from __future__ import annotations

import sqlalchemy as sa

from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import DEVICES, EVENTS, SESSIONS
from cloud.orrery.fleet import timeline


def test_the_last_state_is_of_the_boot_seen_last_whatever_its_id(tmp_path):
    e = engine_for(f"sqlite:///{tmp_path / 's.db'}")
    with e.begin() as c:
        did = c.execute(
            sa.insert(DEVICES).returning(DEVICES.c.id),
            [{"name": "d", "fleet": "f", "created_ms": 0, "boot": 2}],
        ).scalar_one()
        # boot 9 first, then a reboot into boot 2
        c.execute(sa.insert(SESSIONS), [
            {"device_id": did, "boot": 9, "first_seen_ms": 1_000, "last_seen_ms": 4_000},
            {"device_id": did, "boot": 2, "first_seen_ms": 5_000, "last_seen_ms": 9_000},
        ])  # fmt: skip
        c.execute(sa.insert(EVENTS), [
            {"device_id": did, "boot": 9, "seq": 1, "up_ms": 10, "event_ms": 2_000,
             "state": "cooling", "event": "hot", "value": 1, "received_ms": 2_000},
            {"device_id": did, "boot": 2, "seq": 1, "up_ms": 10, "event_ms": 6_000,
             "state": "idle", "event": "ready", "value": None, "received_ms": 6_000},
        ])  # fmt: skip
    with e.connect() as c:
        got = timeline.workflow_state(c, did)
    assert got is not None
    assert (got["state"], got["event"], got["boot"], got["current_boot"]) == (
        "idle",
        "ready",
        2,
        True,
    )
    e.dispose()
