"""The companion's structured log: one JSON object per line, on the ``orrery.ingest`` logger."""

from __future__ import annotations

import json
import logging

log = logging.getLogger("orrery.ingest")


def jlog(event: str, level: int = logging.INFO, **fields) -> None:
    """Log one structured (JSON) line."""
    if log.isEnabledFor(level):
        log.log(level, json.dumps({"event": event, **fields}, default=str, sort_keys=True))


def configure_logging(level: str = "INFO") -> None:
    """Structured lines on stderr: one JSON object per line."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter('{"t":"%(asctime)s","level":"%(levelname)s","msg":%(message)s}')
    )
    log.handlers[:] = [handler]
    log.setLevel(level.upper())
    log.propagate = False
