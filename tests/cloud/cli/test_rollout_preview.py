"""``orrery rollout preview``, ``rollout create --preview/--preview-gate`` and the gate in
``rollout start|status|log``, with typer's CliRunner on real rows in a SQLite file (issue 18)."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from cloud.orrery.cli import app
from cloud.orrery.cli.common import os_user
from cloud.orrery.cli.rollout import PREVIEW_REFUSED
from tests.support.cli import flat, run
from tests.support.preview_rows import BROKEN_GATE, LOOSE_GATE, NAMES, WARM, PreviewDb

FAST = ["--success", "100%", "--max-failures", "100%", "--min-devices", "1", "--soak", "0s",
        "--waves", "100%"]  # fmt: skip


@pytest.fixture
def pdb(tmp_path, monkeypatch):
    monkeypatch.delenv("ORRERY_SECRET", raising=False)
    monkeypatch.setenv("ORRERY_SECRET_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("COLUMNS", "250")  # the tables' rows on one line each
    d = PreviewDb(f"sqlite:///{tmp_path / 'o.db'}")
    yield d
    d.close()


def cli(pdb: PreviewDb, *args: str, code: int = 0):
    """``orrery ARGS --db …``, asserting its exit code; on failure one line and no traceback."""
    r = CliRunner().invoke(app, [*args, "--db", pdb.url])
    assert r.exit_code == code, r.output
    if code == 1:
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    return r


def plain(text: str) -> str:
    """Output with rich's wrapping and the tables' column rules undone."""
    return flat(re.sub(r"[│┃]", " ", text))


def create(pdb: PreviewDb, *extra: str, code: int = 0):
    return cli(pdb, "rollout", "create", "--workflow", "greenhouse@3", "--target", "fleet=f1",
               *FAST, *extra, code=code)  # fmt: skip


def test_preview_prints_the_summary_and_the_most_changed_devices_and_stores_it(pdb):
    create(pdb)
    out = plain(cli(pdb, "rollout", "preview", "1").stdout)
    assert "most changed devices" in out
    # the warm boards change (before→after), in the table with where the versions part first
    for n in WARM:
        assert f"{n} 0→103 0→52 0 idle→cooling " in out
    assert "p05" not in out.split("most changed devices")[1]  # unchanged: not in the table
    assert "greenhouse@3 over " in out and "6 of 6 device(s) replayed, 2 change" in out
    assert "stored with rollout 1: `orrery rollout status 1` shows it" in out
    status = flat(cli(pdb, "rollout", "status", "1").stdout)
    assert "preview of " in status and "6 of 6 device(s) replayed, 2 change" in status
    assert "preview gate" not in status  # it has none
    rows = json.loads(cli(pdb, "rollout", "log", "1", "--json").stdout)
    assert [(r["event"], r["by"]) for r in rows] == [("created", os_user()), ("preview", os_user())]
    assert rows[1]["detail"].startswith("greenhouse@3 over ")
    assert "preview" in flat(cli(pdb, "rollout", "log", "1").stdout)
    # --json: the whole report, every device's entry
    rep = json.loads(cli(pdb, "rollout", "preview", "1", "--json", "--top", "1").stdout)
    assert rep["to"] == "greenhouse@3" and rep["devices"] == 6
    assert sorted(d["device"] for d in rep["per_device"]) == NAMES
    assert rep["gate"] is None and rep["summary"] and rep["verdict"]


def test_create_with_a_broken_gate_creates_the_draft_exits_3_and_start_refuses_it(pdb):
    r = create(pdb, "--preview", "--preview-gate", BROKEN_GATE, code=PREVIEW_REFUSED)
    out = flat(r.stdout)
    assert f"gate broken: {BROKEN_GATE} on 2 device(s) (p00, p01)" in out
    assert "created rollout 1 of greenhouse@3 (draft)" in out
    assert "`orrery rollout start 1` refuses it" in out  # not an invitation to start it
    r = cli(pdb, "rollout", "start", "1", code=1)
    assert flat(r.output).startswith("error: rollout 1 cannot start: its preview of ")
    assert f"{BROKEN_GATE} on 2 device(s) (p00, p01)" in flat(r.output)
    status = flat(cli(pdb, "rollout", "status", "1").stdout)
    assert f"preview gate: {BROKEN_GATE}" in status and "gate broken" in status
    assert "draft" in status
    assert [e["event"] for e in json.loads(cli(pdb, "rollout", "log", "1", "--json").stdout)] == [
        "created", "preview",
    ]  # fmt: skip
    # --json: the plan with the preview; exit 3 all the same
    r = cli(pdb, "rollout", "create", "--workflow", "greenhouse@3", "--target", "fleet=f1",
            *FAST, "--dry-run", "--preview", "--preview-gate", BROKEN_GATE, "--json",
            code=PREVIEW_REFUSED)  # fmt: skip
    got = json.loads(r.stdout)
    assert got["rollout_id"] is None and got["preview"]["gate"]["passed"] is False


def test_create_with_a_gate_it_keeps_starts(pdb):
    out = flat(create(pdb, "--preview", "--preview-gate", LOOSE_GATE).stdout)
    assert f"gate passed ({LOOSE_GATE})" in out
    assert "rollout 1 running" in flat(cli(pdb, "rollout", "start", "1").stdout)
    status = flat(cli(pdb, "rollout", "status", "1").stdout)
    assert f"preview gate: {LOOSE_GATE}" in status and "gate passed" in status


def test_a_gate_without_preview_is_checked_at_start(pdb):
    out = flat(create(pdb, "--preview-gate", BROKEN_GATE).stdout)
    assert f"its preview gate '{BROKEN_GATE}' is checked then" in out
    status = flat(cli(pdb, "rollout", "status", "1").stdout)
    assert "no preview yet: `orrery rollout preview 1` (start runs one)" in status
    cli(pdb, "rollout", "start", "1", code=1)
    assert "gate broken" in flat(cli(pdb, "rollout", "status", "1").stdout)


def test_dry_run_preview_creates_nothing(pdb):
    out = flat(create(pdb, "--dry-run", "--preview").stdout)
    assert "6 of 6 device(s) replayed, 2 change" in out and "dry run: nothing was created" in out
    assert "no rollouts" in cli(pdb, "rollout", "list").stdout


def test_a_rollback_preview_is_printed_not_stored(pdb):
    pdb.add(["r00"], 1, "idle")
    cli(pdb, "rollout", "create", "--workflow", "greenhouse@3", "--target", "device=r00", *FAST)
    pdb.runs(["r00"], 3, "watering")
    r = cli(pdb, "rollout", "preview", "1", "--rollback", code=PREVIEW_REFUSED)
    out = plain(r.stdout)
    assert (
        "r00 - - - watering stranded: state 'watering' of greenhouse v3 has no place in v1" in out
    )
    assert "a rollback's preview is not stored" in out
    assert "preview of" not in flat(cli(pdb, "rollout", "status", "1").stdout)


def test_bad_inputs_are_one_line(pdb):
    create(pdb)
    pdb.bundle_rollout()  # rollout 2
    cases = [
        (
            ("rollout", "preview", "2"),
            "error: rollout 2 rolls out app bundle app@2.0: a preview "
            "replays workflows, not app bundles",
        ),
        (("rollout", "preview", "99"), "error: no rollout 99 (see `orrery rollout list`)"),
        (
            ("rollout", "preview", "1", "--since", "yesterday"),
            "error: --since: 'yesterday' is "
            "neither a duration (90s, 10m, 24h, 7d), an ISO 8601 time (2026-11-21T10:00:00) nor "
            "unix seconds",
        ),
        (("rollout", "preview", "1", "--until", "soon"), "error: --until: 'soon' is neither"),
        (("rollout", "preview", "1", "--since", "1h", "--until", "2h"), "error: --since "),
        (
            ("rollout", "preview", "1", "--alert", "temp>3"),
            "error: --alert: alert rule "
            "'temp>3': expected CHANNEL>LEVEL or CHANNEL<LEVEL, e.g. 0>3000",
        ),
        (
            (
                "rollout",
                "create",
                "--workflow",
                "greenhouse@3",
                "--target",
                "all",
                "--preview-gate",
                "events.alarm<=+10%",
            ),
            "error: --preview-gate: bound 'events.alarm<=+10%': greenhouse@3 has no event 'alarm'",
        ),
        (
            (
                "rollout",
                "create",
                "--workflow",
                "greenhouse@3",
                "--target",
                "all",
                "--preview-gate",
                "nonsense",
            ),
            "error: --preview-gate: ",
        ),
        (
            (
                "rollout",
                "create",
                "--workflow",
                "greenhouse@3",
                "--target",
                "all",
                "--preview",
                "--preview-since",
                "later",
            ),
            "error: --preview-since: 'later' is neither",
        ),
    ]
    for args, want in cases:
        r = cli(pdb, *args, code=1)
        assert flat(r.output).startswith(want), (args, r.output)
    assert "preview" not in [
        e["event"] for e in json.loads(cli(pdb, "rollout", "log", "1", "--json").stdout)
    ]
    # nothing more was created by the refused creates
    assert len(json.loads(run("rollout", "list", "--json", "--db", pdb.url).stdout)) == 2
