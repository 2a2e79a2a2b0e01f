"""``VirtualFleet.drain`` calls a fleet settled only once the companion's reconciler has looked
at what was stored: a hole becomes a gap at a reconcile pass (every ``reconcile_every_s`` of
real time), and the fleet can run minutes of virtual time between two passes (after the
companion was restarted it runs unpaced until it has caught up with real time). Before, drain
checked "no gap open" before any pass had seen the readings a broker crash lost, and said
settled with those readings neither stored nor asked for again: the reliability tests'
accounting then failed now and then (test_boards_with_clocks_off_by_an_hour..., 1 run in 4)."""

from __future__ import annotations

import pytest

from cloud.orrery.sim.fleet import VirtualFleet

MIN = 60_000
EVERY_S = 3.0  # the reconciler's period here: longer than a drain that does not wait for it


@pytest.mark.slow
def test_drain_waits_until_the_reconciler_has_seen_a_hole_the_broker_left(tmp_path):
    fleet = VirtualFleet(2, f"sqlite:///{tmp_path / 'cloud.db'}",
                         seed=5, uplink_ms=10_000, speed=100, spike_ppm=0, dropout_ppm=0)  # fmt: skip
    try:
        fleet.start_companion(reconcile_every_s=EVERY_S)
        assert fleet.wait(lambda: fleet.online_count() == 2, 5 * MIN), "every board came online"
        fleet.run(MIN)
        fleet.stop_companion()  # its session stays: the broker queues what the boards send
        fleet.run(30_000)
        fleet.kill_broker()  # and loses it (the boards had their PUBACKs): a hole on each
        fleet.start_companion(reconcile_every_s=EVERY_S)
        fleet.run(20_000)  # batches after the hole are stored; no reconcile pass yet
        fleet.freeze()
        assert fleet.drain(20 * MIN), fleet.unsettled()
        acc = fleet.account()
        assert acc.ok and acc.on_boards == 0, acc.problems()
        assert acc.stored == acc.accepted > 0, "every reading the boards accepted is stored"
        done = fleet.rows("SELECT status FROM commands WHERE kind = 'resend'")
        assert done.count(("done",)) >= 2, ("the holes came back through resends", done)
    finally:
        fleet.close()
