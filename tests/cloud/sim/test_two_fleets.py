"""Two virtual fleets (two ``orrery sim`` runs) on one broker, each with its own database and
companion, do not corrupt each other: each run has its own device ids, fleet and
shared-subscription group, so every reading ends up exactly once in its own run's database.
Before, both used devices ``vb0000``… in fleet ``sim`` and group ``orrery-sim``: their boards
took over each other's MQTT sessions and each companion received half of the other's
messages (and dead-lettered them as unknown devices)."""

from __future__ import annotations

from cloud.orrery.sim.fleet import VirtualFleet

N = 4


def test_two_fleets_on_one_broker_keep_to_themselves(broker, tmp_path):
    fleets = [
        VirtualFleet(N, f"sqlite:///{tmp_path / f'{k}.db'}", broker=("127.0.0.1", broker.port),
                     seed=3, uplink_ms=10_000)  # fmt: skip
        for k in ("a", "b")
    ]
    a, b = fleets
    try:
        assert a.run_id != b.run_id
        assert not set(a.boards) & set(b.boards) and a.fleet_id != b.fleet_id
        # the same seed gives the same sensors, whatever the run id
        assert [x.climate for x in a.boards.values()] == [x.climate for x in b.boards.values()]
        for f in fleets:
            f.start_companion()
        for _ in range(12):  # interleaved: both are on the broker at the same time
            for f in fleets:
                f.run(10_000)
        for f in fleets:
            f.freeze()
        for f in fleets:
            assert f.drain(), f.unsettled()
        for f in fleets:
            acc = f.account()
            assert acc.ok, acc.problems()
            assert acc.accepted > 0 and acc.stored == acc.accepted
            assert f.rows("SELECT count(*) FROM dead_letters") == [(0,)]
            assert f.rows("SELECT DISTINCT fleet FROM devices") == [(f.fleet_id,)]
            assert f.online_count() == N
    finally:
        for f in fleets:
            f.close()
