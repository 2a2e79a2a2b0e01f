"""Live alert rules: a live (not backlog) reading above or below a level on one channel."""

from __future__ import annotations

from dataclasses import dataclass


def is_alarm(event: str) -> bool:
    """True for a workflow event the health gate counts as an alarm: its name says alarm or
    fault (the device's ``alarms`` counter, a rollout's health, a preview's alerts)."""
    return "alarm" in event or "fault" in event


@dataclass(frozen=True)
class AlertRule:
    """A live alert: channel ``channel`` reads above (``>``) or below (``<``) ``level``."""

    channel: int
    op: str
    level: int

    @classmethod
    def parse(cls, text: str) -> AlertRule:
        """Parse ``CHANNEL>LEVEL`` or ``CHANNEL<LEVEL`` (raw S16 values), e.g. ``0>3000``."""
        for op in (">", "<"):
            if op in text:
                ch, _, lv = text.partition(op)
                try:
                    rule = cls(int(ch), op, int(lv))
                except ValueError:
                    break
                if not 0 <= rule.channel <= 255 or not -32767 <= rule.level <= 32767:
                    break
                return rule
        raise ValueError(
            f"alert rule {text!r}: expected CHANNEL>LEVEL or CHANNEL<LEVEL, e.g. 0>3000"
        )

    @property
    def name(self) -> str:
        return f"{self.channel}{self.op}{self.level}"

    def trips(self, channel: int, value: int) -> bool:
        return channel == self.channel and (
            value > self.level if self.op == ">" else value < self.level
        )
