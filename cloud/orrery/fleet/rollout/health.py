"""The rollout health gate: upgraded boards against not-yet-upgraded ones over a wave's soak.

Each member's health counters are snapshot when its wave's soak starts; the gate compares what
they counted since, per metric, with a one-sided exact binomial test of the rate ratio.
"""

from __future__ import annotations

import json
import math

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.db.tables import DEVICES, ROLLOUT_DEVICES

HEALTH = ("reboots", "link_drops", "invalid", "alarms")


def snapshot_baseline(conn: Connection, rollout_id: int, pg: bool) -> None:
    """Snapshot every member's health counters when the current wave's soak starts: one
    UPDATE, the JSON object built by the database."""
    obj = sa.func.json_build_object if pg else sa.func.json_object
    pairs = [x for k in HEALTH for x in (sa.literal_column(f"'{k}'"), DEVICES.c[k])]
    snapshot = (
        sa.select(sa.cast(obj(*pairs), sa.Text))
        .where(DEVICES.c.id == ROLLOUT_DEVICES.c.device_id)
        .scalar_subquery()
    )
    conn.execute(
        sa.update(ROLLOUT_DEVICES)
        .where(ROLLOUT_DEVICES.c.rollout_id == rollout_id)
        .values(baseline=snapshot)
    )


def gate(conn: Connection, r, significance: float) -> dict:
    """Compare upgraded boards with online not-yet-upgraded ones over the soak: per metric,
    the counts since the soak started, and a one-sided exact test of the rate ratio. A metric
    regresses when the upgraded boards have at least 5 events, at least twice the control's
    rate, and p < ``significance`` / 4 (Bonferroni over the four metrics): a handful of
    unrelated reboots landing on the canaries must not stop a rollout."""
    rows = conn.execute(
        sa.select(
            ROLLOUT_DEVICES.c.state,
            ROLLOUT_DEVICES.c.wave,
            ROLLOUT_DEVICES.c.baseline,
            DEVICES.c.online,
            *(DEVICES.c[k] for k in HEALTH),
        )
        .join(DEVICES, DEVICES.c.id == ROLLOUT_DEVICES.c.device_id)
        .where(ROLLOUT_DEVICES.c.rollout_id == r.id, ROLLOUT_DEVICES.c.baseline.is_not(None))
    ).all()
    up = [x for x in rows if x.state == "succeeded"]
    # offline boards report nothing: counting them would make the control look healthier
    ctl = [x for x in rows if x.state == "queued" and x.wave > r.wave and x.online]
    result: dict = {"upgraded": len(up), "control": len(ctl), "metrics": {}, "regressed": []}
    if not up or not ctl:
        return result

    def since_baseline(xs) -> dict[str, int]:
        tot = dict.fromkeys(HEALTH, 0)
        for x in xs:
            base = json.loads(x.baseline)
            for k in HEALTH:
                tot[k] += max(0, getattr(x, k) - base[k])
        return tot

    d1, d0 = since_baseline(up), since_baseline(ctl)
    for k in HEALTH:
        c1, c0 = d1[k], d0[k]
        p = binomial_tail(c1, c1 + c0, len(up) / (len(up) + len(ctl)))
        result["metrics"][k] = {"upgraded": c1, "control": c0, "p": round(p, 6)}
        if c1 >= 5 and c1 * len(ctl) >= 2 * c0 * len(up) and p < significance / len(HEALTH):
            result["regressed"].append(
                f"{k}: {c1} on {len(up)} upgraded vs {c0} on {len(ctl)} not upgraded (p={p:.2g})"
            )
    return result


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p); in log space, so large counts do not overflow."""
    if k <= 0:
        return 1.0
    if n <= 0 or k > n or p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    lp, lq, ln = math.log(p), math.log1p(-p), math.lgamma(n + 1)

    def term(i: int) -> float:
        return math.exp(ln - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq)

    # sum away from the mean, where the terms shrink, and stop once they no longer count
    upper = k > n * p
    i, step = (k, 1) if upper else (k - 1, -1)
    total = 0.0
    while 0 <= i <= n:
        t = term(i)
        total += t
        if t <= total * 1e-17:
            break
        i += step
    return min(1.0, total) if upper else max(0.0, 1.0 - total)
