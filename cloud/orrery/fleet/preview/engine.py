"""``run``: replay many devices' stored readings through two versions, in parallel processes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy.engine import Engine

from cloud.orrery.fleet.preview.bounds import Bound
from cloud.orrery.fleet.preview.model import Target
from cloud.orrery.ingest.alerts import AlertRule


def run(
    engine: Engine,
    targets: Sequence[Target],
    since_ms: int,
    until_ms: int,
    *,
    to: str,
    workers: int | None = None,
    alert_rules: Sequence[AlertRule] = (),
    bounds: Sequence[Bound] = (),
    bounds_text: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Replay each target's readings in [since_ms, until_ms) through its running version and
    its new one; the report ``model`` documents. ``to`` labels the new side."""
    raise NotImplementedError  # issue 18: the engine helper writes it
