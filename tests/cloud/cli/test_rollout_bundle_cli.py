"""``orrery rollout create --bundle …`` and ``rollout status`` of a bundle rollout, with typer's
CliRunner on a real SQLite file (the boards' acks through the real ingest; ``orrery serve``'s
part is an Orchestrator ``tick``)."""

from __future__ import annotations

import json

import pytest

from cloud.orrery.db.engine import engine_for
from cloud.orrery.fleet import bundles
from cloud.orrery.fleet.rollout import ota
from cloud.orrery.fleet.rollout.orchestrator import Orchestrator
from cloud.orrery.ingest.handler import Ingest, Message
from shared import bundle as packing
from shared.wire import codec
from tests.support.cli import flat, run

SECRET = "cli-bundle-fleet-secret-0123456789"
NAMES = [f"d{i:02d}" for i in range(8)]
DATA = packing.pack([("app/main.mpy", bytes(range(256)) * 30)])


def state(name: str, mpy: str | None = "6.3") -> Message:
    t = codec.topic("f1", name, codec.STATE)
    return Message(t, codec.encode_state(True, "1.0", None, None, None, 1, 0, False, None, None,
                                         mpy=mpy))  # fmt: skip


@pytest.fixture
def cloud(tmp_path, monkeypatch):
    monkeypatch.setenv("ORRERY_SECRET", SECRET)
    monkeypatch.delenv("ORRERY_SECRET_FILE", raising=False)
    url = f"sqlite:///{tmp_path / 'o.db'}"
    run("devices", "add", *NAMES, "--fleet", "f1", "--profile", "esp32-devkitc", "--db", url)
    run("devices", "add", "s3a", "s3b", "--fleet", "f1", "--profile", "esp32-s3", "--db", url)
    engine = engine_for(url)
    ingest = Ingest(engine, reorder_window_ms=0)
    ingest.handle([state(n) for n in [*NAMES, "s3a", "s3b"]])
    with engine.begin() as c:
        m = {"name": "app", "version": "2.0", "profile": "esp32-devkitc", "mpy_version": "6.3",
             "source_hash": "0" * 64, "files": []}  # fmt: skip
        bundles.push(c, DATA, m, 0)
    yield url, engine, ingest
    engine.dispose()


def test_an_incompatible_target_is_refused_in_one_line_dry_run_too(cloud):
    url, engine, _ = cloud
    for dry in ([], ["--dry-run"]):
        r = run("rollout", "create", "--bundle", "app@2.0", "--target", "all", *dry, "--db", url,
                ok=False)  # fmt: skip
        assert flat(r.output) == (
            "error: bundle app@2.0 cannot run on 2 of the 10 target device(s), nothing was sent: "
            "s3a: profile esp32-s3, bundle built for esp32-devkitc; s3b: profile esp32-s3, "
            "bundle built for esp32-devkitc"
        )
    with engine.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM rollouts").scalar() == 0
        assert c.exec_driver_sql("SELECT count(*) FROM commands").scalar() == 0
    r = run("rollout", "create", "--target", "all", "--db", url, ok=False)
    assert "give one of --workflow NAME@VERSION or --bundle NAME@VERSION" in flat(r.output)
    r = run("rollout", "create", "--bundle", "app@9", "--target", "all", "--db", url, ok=False)
    assert "no bundle 'app@9' in the registry (known: app@2.0)" in flat(r.output)


def test_create_start_and_status_with_download_progress(cloud):
    url, engine, ingest = cloud
    plan = json.loads(run("rollout", "create", "--bundle", "app@2.0", "--target",
                          "profile=esp32-devkitc", "--waves", "100%", "--json", "--db", url).stdout)  # fmt: skip
    assert plan["workflow"] == "app@2.0" and plan["kind"] == "bundle"
    rid = plan["rollout_id"]
    out = run("rollout", "create", "--bundle", "app@2.0", "--target", "device=d00", "--db", url)
    assert "of bundle app@2.0 (draft)" in flat(out.stdout)
    run("rollout", "start", str(rid), "--db", url)
    orch = Orchestrator(engine, SECRET.encode(), owner="serve")
    sent = orch.tick()
    n = ota.chunk_count(len(DATA))
    ingest.handle([Message(codec.topic("f1", o.topic.split("/")[2], codec.ACKS),
                           codec.encode_ack(o.command_id, codec.IN_PROGRESS, f"next 0/{n}"))
                   for o in sent])  # fmt: skip
    chunks = orch.tick()
    assert len(chunks) == len(NAMES) * ota.WINDOW
    first = [o for o in chunks if o.topic.split("/")[2] == "d00"][0]
    ingest.handle([Message(codec.topic("f1", "d00", codec.ACKS),
                           codec.encode_ack(first.command_id, codec.OK, f"next 1/{n}"))])  # fmt: skip
    orch.tick()
    s = json.loads(run("rollout", "status", str(rid), "--json", "--db", url).stdout)
    assert s["kind"] == "bundle"
    progress = {d["device"]: d["progress"] for d in s["downloads"]}
    assert progress == {**{x: f"chunk 0/{n}" for x in NAMES}, "d00": f"chunk 1/{n}"}
    text = flat(run("rollout", "status", str(rid), "--db", url).stdout)
    assert f"downloading (8): d00 chunk 1/{n}, d01 chunk 0/{n}" in text
