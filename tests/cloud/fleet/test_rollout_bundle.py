"""Bundle rollouts (app OTA) on a real database: the orchestrator and ``fleet.rollout.ota``
against boards that speak the chunk protocol (``firmware/bundle.py``'s side, written out here:
each envelope is checked like a board checks it, and answered through the real ingest).

End-to-end runs with the real firmware on the virtual fleet are in tests/cloud/sim.
"""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
import sqlalchemy as sa

from cloud.orrery.fleet import bundles, commands, keys, timeline
from cloud.orrery.fleet.rollout import ota
from cloud.orrery.fleet.rollout.plan import RolloutError
from cloud.orrery.ingest.handler import Message
from shared import bundle as packing
from shared.wire import codec
from tests.cloud.fleet.test_rollout import FAST, SECRET, Env

DATA = packing.pack([("app/main.mpy", os.urandom(9000)), ("app/lib.mpy", os.urandom(3000))])
N = ota.chunk_count(len(DATA))


def manifest(version: str, profile: str = "esp32-devkitc", mpy: str = "6.3") -> dict:
    return {"name": "app", "version": version, "profile": profile, "mpy_version": mpy,
            "source_hash": "0" * 64, "files": []}  # fmt: skip


class Board:
    """One board's bundle download as firmware/bundle.py keeps it: the chunks stored on
    flash survive a power cut; the open download (RAM) does not."""

    def __init__(self, env: Env, name: str, fw: str = "1.0") -> None:
        self.env, self.name, self.fw = env, name, fw
        self.verifier = codec.Verifier(keys.device_key(SECRET, name), name)
        self.flash = b""  # what the download holds on flash
        self.open: dict | None = None  # the download in RAM
        self.stored: list[int] = []  # chunk indexes stored, in order
        self.fail_trial = False

    def report(self) -> None:
        t = codec.topic("f1", self.name, codec.STATE)
        self.env.send([Message(t, codec.encode_state(
            True, self.fw, None, None, None, self.env.boots[self.name], 0, False, None, None,
            mpy="6.3"))])  # fmt: skip

    def power_cut(self) -> None:
        self.open = None
        self.env.boots[self.name] += 1
        self.report()

    def handle(self, o: commands.Outgoing) -> None:
        code, cmd, detail = self.verifier.check(o.payload, self.env.now // 1000)
        if code != codec.OK:
            return self.env.ack(o.command_id, code, detail)
        a = cmd["args"]
        if cmd["kind"] == "install_bundle":
            self.open = {**a, "cmd": cmd["id"]}
            if len(self.flash) // a["chunk_size"] * a["chunk_size"] != len(self.flash):
                self.flash = self.flash[: len(self.flash) // a["chunk_size"] * a["chunk_size"]]
            k = len(self.flash) // a["chunk_size"]
            return self.env.ack(cmd["id"], codec.IN_PROGRESS, f"next {k}/{a['chunks']}")
        assert cmd["kind"] == "bundle_chunk"
        if self.open is None:
            return self.env.ack(cmd["id"], codec.REJECTED, "no bundle download in progress")
        st, i = self.open, a["index"]
        k = len(self.flash) // st["chunk_size"]
        if i < k:
            return self.env.ack(cmd["id"], codec.OK, f"chunk {i} already stored")
        if i > k:
            return self.env.ack(cmd["id"], codec.REJECTED, f"next {k}/{st['chunks']}")
        self.flash += base64.b64decode(a["data"])
        self.stored.append(i)
        if i + 1 < st["chunks"]:
            return self.env.ack(cmd["id"], codec.OK, f"next {i + 1}/{st['chunks']}")
        assert hashlib.sha256(self.flash).hexdigest() == st["sha256"]
        self.env.ack(cmd["id"], codec.OK, f"bundle {st['version']} stored; rebooting")
        self.flash, self.open = b"", None
        self.env.boots[self.name] += 1
        old, self.fw = self.fw, st["version"]
        self.report()  # the trial boot
        if self.fail_trial:
            self.env.boots[self.name] += 1
            self.fw = old
            self.report()
            return self.env.ack(st["cmd"], codec.FAILED, "rolled back: trial boot crashed")
        self.env.ack(st["cmd"], codec.OK, f"running bundle {st['version']}")


class Fleet(Env):
    def __init__(self, url: str, n: int) -> None:
        super().__init__(url, n)
        self.b = {f"d{i:02d}": Board(self, f"d{i:02d}") for i in range(n)}
        for b in self.b.values():
            b.report()
        with self.engine.begin() as c:
            bundles.push(c, DATA, manifest("2.0"), 0)
            bundles.push(c, DATA + b"x", manifest("3.0"), 0)

    def deliver(self, out, hold: set[str] = frozenset()) -> int:
        n = 0
        for o in out:
            name = o.topic.split("/")[2]
            if name not in hold:
                self.b[name].handle(o)
                n += 1
        return n

    def run(self, o, ticks: int = 200, hold: set[str] = frozenset(), step_ms: int = 1000):
        for _ in range(ticks):
            self.advance(step_ms)
            with self.engine.begin() as c:  # as the service does
                commands.expire(c, self.now)
            out = o.tick()
            # what a board's pull brings back (the companion publishes it when it comes online)
            with self.engine.connect() as c:
                out += [p for p in commands.pending_for(c, None, self.now) if p not in out]
            self.deliver(out, hold)


@pytest.fixture
def fleet(tmp_path):
    f = Fleet(f"sqlite:///{tmp_path / 'cloud.db'}", 6)
    yield f
    f.engine.dispose()


def create(f: Fleet, o, ref: str = "app@2.0", **kw) -> int:
    plan = o.create(None, "fleet=f1", "100%", bundle=ref, **{**FAST, **kw})
    o.start(plan.rollout_id)
    return plan.rollout_id


def chunk_rows(f: Fleet, name: str) -> list[tuple]:
    return [tuple(r) for r in f.rows(
        "SELECT c.id, c.status, c.ack_code, c.ack_detail FROM commands c JOIN devices d"
        " ON d.id = c.device_id WHERE d.name = :n AND c.kind = 'bundle_chunk' ORDER BY c.created_ms,"
        " c.id", n=name)]  # fmt: skip


def test_a_bundle_rollout_sends_chunks_in_a_window_and_succeeds_on_the_final_ok(fleet):
    f = fleet
    o = f.orch()
    rid = create(f, o)
    out = o.tick()
    assert {x.topic.split("/")[2] for x in out} == set(f.b) and len(out) == 6
    f.deliver(out)
    out = o.tick()  # the installs answered "next 0/N": WINDOW chunks each
    assert len(out) == 6 * ota.WINDOW
    assert all(len(x.payload) < 3000 for x in out), "a chunk envelope stays well under 4 KiB"
    s = f.summary(o, rid)
    assert s["kind"] == "bundle" and s["workflow"] == "app@2.0"
    assert {d["progress"] for d in s["downloads"]} == {f"chunk 0/{N}"}
    f.deliver(out)
    o.tick()
    s = f.summary(o, rid)
    assert {d["progress"] for d in s["downloads"]} == {f"chunk {ota.WINDOW}/{N}"}
    f.run(o, 20)
    assert set(f.members(rid).values()) == {"succeeded"}
    assert f.rollout(rid)[0] == "finished"
    for name, b in f.b.items():
        assert b.stored == list(range(N)), "each chunk sent and stored once"
        assert len(chunk_rows(f, name)) == N
    assert f.rows("SELECT DISTINCT fw, mpy FROM devices") == [("2.0", "6.3")]
    assert f.rows("SELECT DISTINCT prev_fw FROM rollout_devices WHERE rollout_id = :r", r=rid) == [
        ("1.0",)
    ]
    with f.engine.connect() as c:  # the device's history names the bundle
        did = c.execute(sa.text("SELECT id FROM devices WHERE name = 'd00'")).scalar_one()
        (h,) = timeline.rollout_history(c, did)
        log = timeline.install_entries(c, did, None, 50)
    assert (h["workflow"], h["from"], h["state"]) == ("app@2.0", "app@1.0", "succeeded")
    assert any(e.summary.startswith(f"rollout {rid} (app@2.0): succeeded") for e in log)


def test_incompatible_boards_are_refused_before_anything_is_sent(fleet):
    f = fleet
    with f.engine.begin() as c:
        bundles.push(c, DATA, manifest("2.1", profile="esp32-s3"), 0)
        bundles.push(c, DATA, manifest("2.2", mpy="5.0"), 0)
        c.execute(sa.text("UPDATE devices SET mpy = NULL WHERE name = 'd05'"))
    o = f.orch()
    for dry in (False, True):
        with pytest.raises(RolloutError) as exc:
            o.create(None, "fleet=f1", "100%", bundle="app@2.1", dry_run=dry, **FAST)
        assert str(exc.value).startswith(
            "bundle app@2.1 cannot run on 6 of the 6 target device(s), nothing was sent: "
            "d00: profile esp32-devkitc, bundle built for esp32-s3; d01: "
        )
        assert str(exc.value).endswith("… (+1 more)") and "\n" not in str(exc.value)
    with pytest.raises(RolloutError) as exc:
        o.create(None, "fleet=f1", "100%", bundle="app@2.2", **FAST)
    assert "d00: .mpy version 6.3, bundle compiled for 5.0" in str(exc.value)
    with pytest.raises(RolloutError) as exc:
        o.create(None, "device=d05", "100%", bundle="app@2.0", **FAST)
    assert str(exc.value).endswith("d05: .mpy version not reported yet, bundle compiled for 6.3")
    assert f.rows("SELECT count(*) FROM rollouts")[0][0] == 0
    assert f.rows("SELECT count(*) FROM commands")[0][0] == 0


def test_a_power_cut_mid_download_resumes_with_only_the_missing_chunks(fleet):
    f = fleet
    o = f.orch()
    rid = create(f, o)
    f.run(o, 3)
    b = f.b["d01"]
    have = len(b.stored)
    assert 0 < have < N
    b.power_cut()  # the chunks in flight find no open download: the install is sent again
    f.run(o, 20)
    assert set(f.members(rid).values()) == {"succeeded"}
    assert b.stored == list(range(N)), "nothing stored twice, nothing skipped"
    installs = f.rows("SELECT c.id, c.ack_detail FROM commands c JOIN devices d ON d.id = c.device_id"
                      " WHERE d.name = 'd01' AND c.kind = 'install_bundle' ORDER BY c.created_ms")  # fmt: skip
    assert len(installs) == 2 and installs[1][1] == "running bundle 2.0"
    resumed = [d for _, _, _, d in chunk_rows(f, "d01") if d and d.startswith("next")]
    assert len(resumed) == N - 1  # the last one says "stored; rebooting"


def test_an_offline_board_resumes_after_its_chunks_expired(fleet):
    f = fleet
    o = f.orch()
    rid = create(f, o)
    f.run(o, 2)
    b = f.b["d02"]
    have = len(b.stored)
    f.state("d02", online=False)  # its will: away for 5 minutes, its chunks expire
    f.run(o, 300, hold={"d02"})
    assert f.members(rid)["d02"] == "acked"
    assert f.rows("SELECT count(*) FROM commands c JOIN devices d ON d.id = c.device_id"
                  " WHERE d.name = 'd02' AND c.status = 'expired'")[0][0] > 0  # fmt: skip
    b.report()  # back
    f.run(o, 30)
    assert f.members(rid)["d02"] == "succeeded"
    assert b.stored == list(range(N)) and have > 0
    installs = f.rows("SELECT c.id FROM commands c JOIN devices d ON d.id = c.device_id"
                      " WHERE d.name = 'd02' AND c.kind = 'install_bundle'")  # fmt: skip
    assert len(installs) == 2, "opened again once it was back"
    # the chunks sent after it came back start where its flash ended
    resent = [int(i.rsplit(".", 1)[1]) for i, st, _, _ in chunk_rows(f, "d02") if st == "done"]
    assert sorted(resent) == list(range(N))


def test_a_gap_is_sent_again_from_the_chunk_the_board_expects(fleet):
    f = fleet
    o = f.orch()
    rid = create(f, o)
    f.deliver(o.tick())
    out = o.tick()
    lost = [x for x in out if x.topic.split("/")[2] == "d03" and x.command_id.endswith(".0")]
    f.deliver([x for x in out if x not in lost])  # chunk 0 to d03 is lost: 1 and 2 are gaps
    f.run(o, 20)
    assert set(f.members(rid).values()) == {"succeeded"}
    assert f.b["d03"].stored == list(range(N))
    rejected = [r for r in chunk_rows(f, "d03") if r[2] == codec.REJECTED]
    assert [r[3] for r in rejected] == [f"next 0/{N}"] * 2


def test_boards_that_fall_back_are_rolled_back_and_pause_the_rollout(fleet):
    f = fleet
    for n in ("d00", "d01", "d02"):
        f.b[n].fail_trial = True
    o = f.orch()
    rid = create(f, o, max_failures="20%", min_devices=2)
    f.run(o, 20)
    m = f.members(rid)
    assert sorted(n for n, s in m.items() if s == "rolled-back") == ["d00", "d01", "d02"]
    assert "succeeded" not in {m[n] for n in ("d00", "d01", "d02")}
    state, reason, _ = f.rollout(rid)
    assert state == "paused" and reason.startswith("failure threshold: 3 of")
    detail = f.rows("SELECT m.detail FROM rollout_devices m JOIN devices d ON d.id = m.device_id"
                    " WHERE d.name = 'd00'")[0][0]  # fmt: skip
    assert detail == "rolled back: trial boot crashed"
    for n in ("d00", "d01", "d02"):
        f.b[n].fail_trial = False
    assert o.retry_failed(rid) == 3
    o.resume(rid)
    f.run(o, 20)
    assert set(f.members(rid).values()) == {"succeeded"}


def test_rollback_goes_back_per_previous_version_or_refuses_in_one_line(fleet):
    f = fleet
    o = f.orch()
    rid = create(f, o)
    f.run(o, 20)
    assert set(f.members(rid).values()) == {"succeeded"}
    rid2 = create(f, o, "app@3.0")
    f.run(o, 20)
    assert set(f.members(rid2).values()) == {"succeeded"}
    assert o.rollback_plan(rid2) == [("app", "2.0", sorted(f.b))]
    with pytest.raises(RolloutError) as exc:
        o.rollback_plan(rid)
    assert str(exc.value) == (
        f"cannot roll back rollout {rid}: 6 device(s) ran app@1.0 before it (d00, d01, d02, d03,"
        " d04 … (+1)), which is not in the registry: push that version, or roll forward"
    )
    (back,) = o.rollback(rid2)
    f.run(o, 20)
    assert set(f.members(back).values()) == {"succeeded"}
    assert {b.fw for b in f.b.values()} == {"2.0"}
    assert o.rollback_plan(back) == [("app", "3.0", sorted(f.b))], "a rollback rolls back too"


def test_joiners_that_can_run_the_bundle_join_the_others_do_not(fleet):
    f = fleet
    o = f.orch(join_every_ms=0)
    rid = create(f, o)
    f.add("d06", "s3x")
    with f.engine.begin() as c:
        c.execute(sa.text("UPDATE devices SET profile = 'esp32-s3' WHERE name = 's3x'"))
    for n in ("d06", "s3x"):
        f.b[n] = Board(f, n)
        f.b[n].report()
    f.run(o, 20)
    m = f.members(rid)
    assert "s3x" not in m and m["d06"] == "succeeded"
    assert f.b["s3x"].stored == [] and f.b["d06"].stored == list(range(N))


def test_cancel_stops_the_downloads(fleet):
    f = fleet
    o = f.orch()
    rid = create(f, o)
    f.deliver(o.tick())
    o.tick()  # chunks queued, not delivered
    o.cancel(rid, force=True)
    assert f.rows("SELECT count(*) FROM commands WHERE kind = 'bundle_chunk' AND status IN"
                  " ('queued', 'sent')")[0][0] == 0  # fmt: skip
    assert set(f.members(rid).values()) == {"canceled"}
