"""A board's channels as people read them: name, scale and unit per channel index, from its
board profile (``hw/boards``); what a reading's raw S16 value means."""

from __future__ import annotations

_UNITS = {"cdegC": (0.01, "°C"), "c%RH": (0.01, "%RH"), "mV": (1.0, "mV")}


def channel_info(profile: str | None) -> dict[int, tuple[str, float, str]]:
    """Channel index -> (name, scale, unit) from a board profile in ``hw/boards``; empty when
    there is no such profile."""
    from firmware.profile import parse_profile
    from tools.board import profiles

    if profile is None:
        return {}
    try:
        channels, _ = parse_profile(profiles.load(profile))
    except (ValueError, OSError):
        return {}
    out = {}
    for i, (name, _kind, spec) in enumerate(channels):
        scale, unit = _UNITS.get(spec.get("unit", ""), (1.0, spec.get("unit", "")))
        out[i] = (name, scale, unit)
    return out
