"""Plotting one device's readings (PNG): the stored values per channel, the simulator's raw
samples when it recorded them, and the workflow's state changes and events."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from cloud.orrery.db.tables import DEVICES, EVENTS, READINGS
from cloud.orrery.ingest.channels import channel_info


def plot_device(
    engine: sa.Engine,
    device: str,
    output: Path,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    raw: dict | None = None,
) -> dict:
    """Plot one device's readings to a PNG: per channel, the stored (filtered) values, the raw
    samples when ``raw`` has them, and the workflow's state changes.

    The cloud stores what a board's filter chain emitted, never the raw samples. ``raw`` is
    what the simulator recorded for this board (``{"samples": [[unix ms, channel, value or
    null], …], "states": [[unix ms, state], …]}``); without it, state changes are the states
    in which the board published its workflow events. Returns what was plotted.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    with engine.connect() as conn:
        dev = conn.execute(
            sa.select(DEVICES.c.id, DEVICES.c.profile).where(DEVICES.c.name == device)
        ).first()
        if dev is None:
            raise LookupError(f"unknown device {device!r} (see `orrery devices list`)")
        q = sa.select(READINGS.c.event_ms, READINGS.c.channel, READINGS.c.value).where(
            READINGS.c.device_id == dev.id, READINGS.c.event_ms.is_not(None)
        )
        qe = sa.select(EVENTS.c.event_ms, EVENTS.c.state, EVENTS.c.event).where(
            EVENTS.c.device_id == dev.id, EVENTS.c.event_ms.is_not(None)
        )
        if since_ms is not None:
            q, qe = (
                q.where(READINGS.c.event_ms >= since_ms),
                qe.where(EVENTS.c.event_ms >= since_ms),
            )
        if until_ms is not None:
            q, qe = q.where(READINGS.c.event_ms < until_ms), qe.where(EVENTS.c.event_ms < until_ms)
        readings = conn.execute(q.order_by(READINGS.c.event_ms)).all()
        events = conn.execute(qe.order_by(EVENTS.c.event_ms)).all()
    info = channel_info(dev.profile)
    samples = [s for s in (raw or {}).get("samples", []) if _within(s[0], since_ms, until_ms)]
    chans = sorted({r.channel for r in readings} | {s[1] for s in samples if s[2] is not None})
    if not chans:
        raise LookupError(f"{device} has no readings with an event time to plot")

    def when(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, UTC)

    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(len(chans), 1, figsize=(12, 2.9 * len(chans) + 1.0), sharex=True)
    axes = list(axes) if len(chans) > 1 else [axes]
    states = [s for s in (raw or {}).get("states") or [] if _within(s[0], since_ms, until_ms)]
    palette = ["#dbe9f8", "#fde2c8", "#d5f0db", "#eedaf3", "#f9f3c4", "#e6e6e6", "#f6d5d5"]
    colors: dict[str, str] = {}
    for ax, ch in zip(axes, chans, strict=True):
        name, scale, unit = info.get(ch, (f"channel {ch}", 1.0, ""))
        fs = [(when(r.event_ms), r.value * scale) for r in readings if r.channel == ch]
        if fs:
            ax.plot(
                *zip(*fs, strict=True), color="#1f5fa8", lw=1.4, label="stored (after the filters)"
            )
        rs = [(when(s[0]), s[2] * scale) for s in samples if s[1] == ch and s[2] is not None]
        if rs:
            ax.plot(*zip(*rs, strict=True), ".", color="#4d4d4d", ms=1.6, alpha=0.6,
                    label="raw samples (simulator)")  # fmt: skip
        drops = [when(s[0]) for s in samples if s[1] == ch and s[2] is None]
        if drops:
            lo = min((v for _, v in fs + rs), default=0)
            ax.plot(drops, [lo] * len(drops), "x", color="#c0392b", ms=5, label="dropout")
        ax.set_ylabel(f"{name} ({unit})" if unit else name)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8, framealpha=0.85, markerscale=4)
    handles: list = []
    if states:
        end = max([when(r.event_ms) for r in readings] + [when(s[0]) for s in samples])
        nxt = [when(s[0]) for s in states[1:]] + [end]
        version = None
        for (t0, st, ver, *_), b in zip((tuple(s) + (None,) for s in states), nxt, strict=True):
            key = f"{st}" if ver is None else f"{st} (v{ver})"
            c = colors.setdefault(key, palette[len(colors) % len(palette)])
            for ax in axes:
                ax.axvspan(when(t0), b, color=c, lw=0)
            if version is not None and ver != version:
                for ax in axes:
                    ax.axvline(when(t0), color="#111111", lw=1.6)
                axes[0].annotate(
                    f"workflow v{ver} installed", (when(t0), 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, 3), textcoords="offset points", fontsize=8, fontweight="bold",
                )  # fmt: skip
            version = ver
        handles = [Patch(color=c, label=k) for k, c in colors.items()]
    if events:
        for ax in axes:
            ax.plot([when(e.event_ms) for e in events], [1.0] * len(events), "v",
                    color="#d35400", ms=6, transform=ax.get_xaxis_transform(), clip_on=False)  # fmt: skip
        names = sorted({e.event for e in events})
        handles.append(Line2D([], [], marker="v", ls="", color="#d35400",
                              label="event: " + ", ".join(names)))  # fmt: skip
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8,
                   title="workflow state (shading)" if states else None, title_fontsize=8,
                   frameon=False)  # fmt: skip
    axes[-1].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=UTC))
    axes[-1].set_xlabel("event time (UTC)")
    what = "raw samples and stored readings" if samples else "stored readings"
    fig.suptitle(f"{device}: {what}, with the workflow's state changes", fontsize=11)
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return {
        "device": device,
        "png": str(output),
        "channels": [info.get(c, (str(c),))[0] for c in chans],
        "readings": len(readings),
        "raw_samples": len(samples),
        "state_changes": len(states),
        "events": len(events),
    }


def _within(ms: int, lo: int | None, hi: int | None) -> bool:
    return (lo is None or ms >= lo) and (hi is None or ms < hi)
