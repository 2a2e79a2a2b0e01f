"""What a virtual board holds in the fleet process: open files (a fleet of 5,000 boards must fit
the open-file limit, ``files_needed``) and no per-board output log."""

from __future__ import annotations

import os
from pathlib import Path

from cloud.orrery.sim.fleet import FILES_PER_BOARD, VirtualFleet, files_needed

N = 6


def _open_files() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile (the listing's own descriptor)
    return out


def test_each_board_holds_at_most_its_share_of_open_files(broker, tmp_path):
    before = len(_open_files())
    f = VirtualFleet(N, f"sqlite:///{tmp_path / 'f.db'}", broker=("127.0.0.1", broker.port),
                     seed=5, uplink_ms=10_000)  # fmt: skip
    try:
        f.run(120_000)  # every board has sent batches: its store has read its log
        files = _open_files()
        for b in f.boards.values():
            assert b.link.connected and b.node.store.acked > 0
            mine = [p for p in files if Path(p).is_relative_to(b.root)]
            # the segment it appends to and its ack-cursor log; not the reader
            assert len(mine) <= FILES_PER_BOARD - 1, mine
            assert b.node.store._rf is None
            assert b.hal.log == []
        assert len(files) - before <= files_needed(N)
    finally:
        f.close()
