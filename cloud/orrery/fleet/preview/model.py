"""What a preview is asked, and the shape of what it answers.

A report (``engine.run``) is plain JSON-able data::

    {
      "to": "greenhouse@3",            # the version previewed ("previous versions" for a rollback)
      "window": {"since_ms": int, "until_ms": int},
      "devices": int,                  # targets asked
      "replayed": int,                 # targets with readings in the window
      "readings": int,                 # readings replayed (each through both versions)
      "seconds": float, "workers": int,
      "skipped": {reason: [device names]},
      "stranded": [{"device", "version", "state", "why"}],   # current state has no place
      "changed": int,                  # devices whose behaviour differs
      "totals": {"running": M, "new": M},
      "top": [device names, most changed first (at most 10)],
      "per_device": [D, ...],          # every replayed device
      "gate": None | {"bounds": str, "passed": bool,
                      "breaches": [{"bound": str, "devices": [names], "count": int,
                                    "actual": str}]},   # actual: the value that broke it,
                                                        # as the bound writes it (+inf%, +3)
    }

    M = {"transitions": int, "state_changes": int, "events": {name: int}, "events_total": int,
         "outputs": {name: {"sets": int, "on_s": float}}, "alerts": int,
         "states_s": {name: float}, "final_state": str | None}

    D = {"device": str, "running_version": str | None, "new_version": str, "readings": int,
         "start_state": str, "start_state_source": "reported" | "initial", "note": str | None,
         "running": M | None, "new": M, "score": float,
         "divergence": None | {"t_ms": int | None, "boot": int, "up_ms": int,
                               "input": {"name": str, "value": int} | None,  # the reading
                               "inputs": {name: int} | None,  # at a deadline: every input's
                                                              # last value
                               "running": {"state": str, "what": str} | None,
                               "new": {"state": str, "what": str} | None}}
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """One device to preview: what it runs now (``name@version``, None: no workflow) and the
    version to replay beside it."""

    device_id: int
    device: str
    profile: str | None
    running: str | None
    new: str
