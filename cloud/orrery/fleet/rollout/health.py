"""The rollout health gate: upgraded boards against not-yet-upgraded ones over a wave's soak.

Each member's health counters are snapshot when its wave's soak starts; the gate compares what
they counted since, per metric, with a one-sided exact binomial test of the rate ratio.
"""

from __future__ import annotations

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
    # the two groups' sizes and counts since the baseline, summed by the database (each
    # member's increase floored at 0): no row per member comes back
    m, d = ROLLOUT_DEVICES, DEVICES
    up = m.c.state == "succeeded"
    # offline boards report nothing: counting them would make the control look healthier
    ctl = sa.and_(m.c.state == "queued", m.c.wave > r.wave, d.c.online.is_(True))
    pg = conn.dialect.name == "postgresql"

    def since(k: str):
        if pg:
            base = sa.func.json_extract_path_text(sa.cast(m.c.baseline, sa.JSON), k)
            return sa.func.greatest(0, d.c[k] - sa.cast(base, sa.BigInteger))
        return sa.func.max(0, d.c[k] - sa.func.json_extract(m.c.baseline, f"$.{k}"))

    def total(cond, x=None):
        return sa.func.coalesce(sa.func.sum(sa.case((cond, 1 if x is None else x), else_=0)), 0)

    row = conn.execute(
        sa.select(total(up), total(ctl), *(total(g, since(k)) for g in (up, ctl) for k in HEALTH))
        .select_from(m.join(d, d.c.id == m.c.device_id))
        .where(m.c.rollout_id == r.id, m.c.baseline.is_not(None))
    ).one()
    n_up, n_ctl = int(row[0]), int(row[1])
    result: dict = {"upgraded": n_up, "control": n_ctl, "metrics": {}, "regressed": []}
    if not n_up or not n_ctl:
        return result
    n = len(HEALTH)
    d1 = {k: int(row[2 + i]) for i, k in enumerate(HEALTH)}
    d0 = {k: int(row[2 + n + i]) for i, k in enumerate(HEALTH)}
    for k in HEALTH:
        c1, c0 = d1[k], d0[k]
        p = binomial_tail(c1, c1 + c0, n_up / (n_up + n_ctl))
        result["metrics"][k] = {"upgraded": c1, "control": c0, "p": round(p, 6)}
        if c1 >= 5 and c1 * n_ctl >= 2 * c0 * n_up and p < significance / len(HEALTH):
            result["regressed"].append(
                f"{k}: {c1} on {n_up} upgraded vs {c0} on {n_ctl} not upgraded (p={p:.2g})"
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
