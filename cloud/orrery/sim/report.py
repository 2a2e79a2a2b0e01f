"""The report of a demo or sim run: what the boards took, what was stored exactly once or lost
with its reason, the rollout's waves, and the faults injected; plain data."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloud.orrery.sim.fleet import VirtualFleet


@dataclass
class Report:
    """What a demo or sim run did, for people (``render``) and scripts (``as_dict``)."""

    devices: int
    virtual_ms: int
    wall_s: float
    waves: list[dict] = field(default_factory=list)
    rollout: dict = field(default_factory=dict)
    readings: dict = field(default_factory=dict)
    loss: list[dict] = field(default_factory=list)
    converged: dict = field(default_factory=dict)
    faults: dict = field(default_factory=dict)
    plot: dict | None = None
    db_url: str = ""
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bundle: dict = field(default_factory=dict)  # the app bundle rollout (orrery demo's last act)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def collect_report(
    fleet: VirtualFleet, wall_s: float, rid: int | None, at_finish: dict | None,
    bundle_rid: int | None = None,
) -> Report:  # fmt: skip
    """Count everything once the fleet has drained: readings, losses, rollout, versions."""
    acc = fleet.account()
    sent = Counter()
    for b in fleet.boards.values():
        sent.update(b.sent())
    rep = Report(
        devices=len(fleet.boards), virtual_ms=fleet.elapsed_ms, wall_s=round(wall_s, 1),
        db_url=fleet.db_url,
    )  # fmt: skip
    rep.readings = {
        "taken": acc.accepted,
        "sent": sent["records"],
        "stored": acc.stored,
        "duplicates_dropped": acc.duplicates_dropped,
        "lost": sum(acc.lost.values()),
        "on_boards_offline": acc.on_boards,
        "unaccounted": sum(b - a + 1 for r in acc.missing.values() for a, b in r),
        "without_event_time": acc.without_time,
    }
    reasons = {
        "store_full": "a board's flash filled while it was offline; the oldest unsent readings "
        "were dropped and reported",
        "corrupt": "a power cut left a damaged record in flash; the board reported its seq",
        "not_held": "the companion asked for a resend and the board no longer held them",
    }
    for reason, n in sorted(acc.lost.items()):
        devs = fleet.rows(
            'SELECT count(DISTINCT device_id), count(*) FROM losses l JOIN devices d ON d.id = '
            "l.device_id WHERE l.reason = :r AND d.fleet = :f", r=reason, f=fleet.fleet_id,
        )[0]  # fmt: skip
        ranges = fleet.rows(
            'SELECT d.name, l."first", l."last" FROM losses l JOIN devices d ON d.id = '
            'l.device_id WHERE l.reason = :r AND d.fleet = :f ORDER BY d.name, l."first" LIMIT 3',
            r=reason, f=fleet.fleet_id,
        )  # fmt: skip
        rep.loss.append({
            "reason": reason, "readings": n, "devices": devs[0], "ranges": devs[1],
            "why": reasons.get(reason, reason),
            "examples": [f"{d} {a}..{z}" for d, a, z in ranges],
        })  # fmt: skip
    rep.problems = acc.problems()
    rep.ok = acc.ok
    versions = Counter(b.version for b in fleet.boards.values())
    db_versions = dict(fleet.rows("SELECT wf_ver, count(*) FROM devices GROUP BY wf_ver"))
    rep.converged = {
        "boards": dict(versions),
        "registry": {str(k): v for k, v in db_versions.items()},
        "online": fleet.online_count(),
    }
    if rid is not None:
        s = fleet.summary(rid)
        rep.rollout = {
            "id": rid, "workflow": s["workflow"], "state": s["state"],
            "converged": s["converged_text"],
            "at_finish": (at_finish or {}).get("converged_text"),
            "preview": (s.get("preview") or {}).get("summary") or [],
        }  # fmt: skip
        for w, w0 in zip(s["waves"], (at_finish or s)["waves"], strict=True):
            rep.waves.append({
                "wave": w["wave"], "size": w["size"], "devices": w["total"],
                "at_finish": w0["states"], "final": w["states"],
            })  # fmt: skip
    if bundle_rid is not None:
        s = fleet.summary(bundle_rid)
        fw = dict(fleet.rows("SELECT fw, count(*) FROM devices WHERE fleet = :f GROUP BY fw",
                             f=fleet.fleet_id))  # fmt: skip
        rep.bundle = {
            "id": bundle_rid, "bundle": s["workflow"], "state": s["state"],
            "reason": s["reason"], "converged": s["converged_text"],
            "waves": [{"wave": w["wave"], "size": w["size"], "devices": w["total"],
                       "states": w["states"]} for w in s["waves"]],
            "boards_on": {str(k): v for k, v in fw.items()},
            "chunks": int(fleet.rows(
                "SELECT count(*) FROM commands c JOIN devices d ON d.id = c.device_id"
                " WHERE c.kind = 'bundle_chunk' AND c.status = 'done' AND d.fleet = :f",
                f=fleet.fleet_id)[0][0]),
        }  # fmt: skip
    rep.faults = {k: v for k, v in sorted(fleet.faults.items())}
    rep.faults["clocks_never_set"] = sum(not b.synced for b in fleet.boards.values())
    off = sum(1 for b in fleet.boards.values() if b.synced and b.skew_ms)
    if off:
        rep.faults["clocks_off"] = off
    return rep
