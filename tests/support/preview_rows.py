"""A fleet database for preview tests, in real rows: greenhouse@1, @2 and @3 in the registry
(@3 is @2 with its cooling threshold lowered from 3000 to 2500), boards on @2 with an hour of
temperature readings up to now (a reading every 10 s, stored with event times) and the state
each last reported before that hour. Two of them (``WARM``) read 27.00 °C: @3 cools them again
and again (``cooling_started``), @2 never; the others read 20.00 °C, where both do nothing."""

from __future__ import annotations

import json

import sqlalchemy as sa

from cloud.orrery.clock import now_ms
from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import DEVICES, EVENTS, READINGS, ROLLOUTS
from cloud.orrery.fleet import bundles, registry
from cloud.orrery.sim import workflows
from shared.workflow import compiler

WF = workflows.DIR
V2_JSON = json.loads((WF / "greenhouse.json").read_bytes())
V3_JSON = json.loads(json.dumps(V2_JSON))
V3_JSON["version"] = 3
V3_JSON["states"][0]["on"][0]["when"]["level"] = 2500
V1 = compiler.compile((WF / "greenhouse_v1.json").read_bytes())
V2 = compiler.compile((WF / "greenhouse.json").read_bytes())
V3 = compiler.compile(json.dumps(V3_JSON).encode())
HASH = {1: V1.hash, 2: V2.hash, 3: V3.hash}
NAMES = [f"p{i:02d}" for i in range(6)]
WARM = ["p00", "p01"]
TEMP = 5  # the temperature's channel index on esp32-devkitc
HOUR_MS = 3_600_000
EVERY_MS = 10_000
# a gate the warm boards break on @3, and one nothing breaks
BROKEN_GATE = "events.cooling_started<=+10%"
LOOSE_GATE = "events.cooling_started<=+100000"


class PreviewDb:
    """The database at ``url`` with the registry, the boards ``NAMES`` on greenhouse@2 and
    their readings (``end_ms``: the readings' end, about now)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)
        self.end_ms = now_ms()
        with self.engine.begin() as c:
            registry.push(c, (WF / "greenhouse_v1.json").read_bytes(), None, 0)
            registry.push(c, (WF / "greenhouse.json").read_bytes(), None, 0)
            registry.push(c, json.dumps(V3_JSON).encode(), None, 0)
        self.add(NAMES, 2, "idle", warm=WARM)

    def add(self, names: list[str], ver: int, state: str, warm: list[str] = ()) -> None:
        """Boards ``names`` on greenhouse ``ver``, that last reported ``state`` an hour and a
        second ago, with an hour of readings (27.00 °C for ``warm``, else 20.00 °C)."""
        start = self.end_ms - HOUR_MS
        with self.engine.begin() as c:
            c.execute(
                sa.insert(DEVICES),
                [{"name": n, "fleet": "f1", "profile": "esp32-devkitc", "created_ms": 0,
                  "online": True, "boot": 1, "fw": "1.2.0", "wf": "greenhouse", "wf_ver": ver,
                  "wf_hash": HASH[ver]} for n in names],
            )  # fmt: skip
            ids = dict(c.execute(sa.select(DEVICES.c.name, DEVICES.c.id)).all())
            for n in names:
                self.event(c, ids[n], state, start - 1000, seq=1)
                v = 2700 if n in warm else 2000
                c.execute(
                    sa.insert(READINGS),
                    [{"device_id": ids[n], "boot": 1, "seq": i + 1, "channel": TEMP, "value": v,
                      "up_ms": 60_000 + i * EVERY_MS, "event_ms": start + i * EVERY_MS,
                      "received_ms": start + i * EVERY_MS} for i in range(HOUR_MS // EVERY_MS)],
                )  # fmt: skip

    @staticmethod
    def event(c, did: int, state: str, at_ms: int, seq: int) -> None:
        """A workflow event the board reported in ``state`` (its last reported state)."""
        c.execute(
            sa.insert(EVENTS),
            [{"device_id": did, "boot": 1, "seq": seq, "up_ms": 0, "event_ms": at_ms,
              "state": state, "event": "status", "received_ms": at_ms}],
        )  # fmt: skip

    def runs(self, names: list[str], ver: int, state: str | None = None) -> None:
        """Boards ``names`` now run greenhouse ``ver`` (and reported ``state`` on it)."""
        with self.engine.begin() as c:
            c.execute(
                sa.update(DEVICES)
                .where(DEVICES.c.name.in_(names))
                .values(wf_ver=ver, wf_hash=HASH[ver])
            )
            if state is not None:
                ids = dict(c.execute(sa.select(DEVICES.c.name, DEVICES.c.id)).all())
                for n in names:
                    self.event(c, ids[n], state, self.end_ms - 500, seq=2)

    def bundle_rollout(self) -> int:
        """A draft rollout of an app bundle (a row, as ``rollout create --bundle`` makes)."""
        m = {"name": "app", "version": "2.0", "profile": "esp32-devkitc", "mpy_version": "6.3",
             "source_hash": "0" * 64, "files": []}  # fmt: skip
        with self.engine.begin() as c:
            bundles.push(c, b"\x00" * 64, m, 0)
            bid = bundles.get(c, "app@2.0", with_data=False).id
            return c.execute(
                sa.insert(ROLLOUTS).returning(ROLLOUTS.c.id),
                [{"bundle_id": bid, "target": "all", "waves": '["100%"]', "success_pct": 95.0,
                  "max_fail_pct": 2.0, "min_devices": 1, "soak_s": 0, "timeout_s": 60,
                  "rate_per_min": 100, "health_s": 60, "state": "draft", "created_ms": 0}],
            ).scalar_one()  # fmt: skip

    def rows(self, sql: str, **kw) -> list:
        with self.engine.connect() as c:
            return c.execute(sa.text(sql), kw).all()

    def close(self) -> None:
        self.engine.dispose()
