"""Every ``orrery`` command, fed bad inputs, fails the same way: one line ``error: …`` that
names what was wrong, a non-zero exit code, and no traceback.

The commands are enumerated from the typer app itself. Each command has templates here (its
valid arguments with one hole); a hole's kind gives the bad values put into it: a missing
file, a directory, a binary file, an unreachable PostgreSQL (a closed port), a SQLite path
that does not exist, malformed and unreachable broker URLs (a free port nothing listens on),
unknown ids. A command without templates, or with a path, database, broker or board-profile
parameter that no template puts a hole in, fails ``test_every_command_and_risky_option_is_covered``,
so a new command or option is covered as soon as it exists. ``orrery serve`` runs as a real
process (it installs signal handlers); the others in-process through typer's CliRunner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from cloud.orrery.cli import app
from cloud.orrery.sim import workflows
from tools.board import bundle as bundle_file
from tools.board import espimage
from tools.dev.mosquitto import free_port

REPO = Path(__file__).resolve().parents[3]
SECRET = "bad-inputs-fleet-secret-0123456789"
GREENHOUSE = str(workflows.GREENHOUSE)
runner = CliRunner()


# --- the commands and their templates ---------------------------------------------------------

# "{good_db}", "{wf}", "{fw}", "{cfg}", "{bundle}", "{png}", "{fresh_dir}" are valid values;
# "{in}", "{out}", "{outdir}", "{db}", "{new_db}", "{broker}", "{host}", "{closed_port}", "{pg}",
# "{serial}", "{device}", "{rollout}", "{command}", "{ref}" are holes (see HOLES). A template
# without a hole is a bad invocation as it stands.
ROLLOUT_IDS = [["{rollout}", "--db", "{good_db}"], ["1", "--db", "{db}"]]
WF2 = ["--workflow", "greenhouse@2", "--target", "all", "--db", "{good_db}"]
PROVISION = ["-n", "1", "--prefix", "p", "--fleet", "f", "--broker-host", "h"]
TEMPLATES: dict[str, list[list[str]]] = {
    "bench device": [["--samples", "1"]],
    "bench ingest": [["--readings", "10"], ["--pg-url", "{pg}"], ["--batch", "26,x"],
                     ["--batch", "0"], ["--workers", "1,1"], ["--workers", "9"]],
    "bench rollout": [["--devices", "5"], ["--db", "{pg}"], ["--bundle", "--db", "{pg}"]],
    "bench fleet": [["--broker", "{broker}"], ["--duration", "soon"]],
    "demo": [["--broker", "{broker}"], ["--out", "{outdir}"]],
    "sim": [["--broker", "{broker}"], ["--db", "{new_db}"], ["--out", "{outdir}"],
            ["--duration", "soon"], ["--db", "{good_db}"]],  # a database with devices already
    "serve": [
        ["--db", "{new_db}"],
        ["--db", "{good_db}", "--ca-file", "{in}"],
        ["--db", "{good_db}", "--password-file", "{in}"],
        ["--db", "{good_db}", "--secret-file", "{in}"],
        ["--db", "{good_db}", "--host", "{host}", "--connect-timeout", "1"],
        ["--db", "{good_db}", "--port", "{closed_port}", "--connect-timeout", "1"],
    ],
    "workflow push": [["{in}", "--db", "{good_db}"], ["{wf}", "--board", "{in}", "--db", "{good_db}"],
                      ["{wf}", "--db", "{new_db}"]],
    "workflow list": [["--db", "{db}"]],
    "workflow show": [["{ref}", "--db", "{good_db}"], ["greenhouse@1", "--db", "{db}"]],
    "workflow diff": [["{ref}", "greenhouse@1", "--db", "{good_db}"],
                      ["greenhouse@1", "greenhouse@2", "--db", "{db}"]],
    "workflow simulate": [["{ref}", "--device", "d00", "--db", "{good_db}"],
                          ["greenhouse@2", "--device", "{device}", "--db", "{good_db}"],
                          ["greenhouse@2", "--device", "d00", "--db", "{db}"]],
    "workflow validate": [["{in}"], ["{wf}", "--board", "{in}"]],
    "workflow compile": [["{in}"], ["{wf}", "--board", "{in}"], ["{wf}", "-o", "{out}"]],
    "bundle build": [["-o", "{out}"], ["--profile", "esp32-nope"], ["--version", "1@2"],
                     ["--name", "my app"]],
    "bundle push": [["{in}", "--db", "{good_db}"], ["{bundle}", "--db", "{new_db}"]],
    "bundle list": [["--db", "{db}"]],
    "bundle show": [["{ref}", "--db", "{good_db}"], ["app@1.0.0", "--db", "{db}"]],
    "bundle diff": [["{ref}", "app@1.0.0", "--db", "{good_db}"],
                    ["app@1.0.0", "app@1.0.0", "--db", "{db}"]],
    "devices add": [["x1", "--db", "{new_db}"], ["not an id", "--db", "{good_db}"]],
    "devices list": [["--db", "{db}"]],
    "devices show": [["{device}", "--db", "{good_db}"], ["d00", "--db", "{db}"]],
    "devices timeline": [["{device}", "--db", "{good_db}"], ["d00", "--db", "{db}"],
                         ["d00", "--since", "yesterday", "--db", "{good_db}"],
                         ["d00", "--since", "5w", "--db", "{good_db}"],
                         ["d00", "--limit", "0", "--db", "{good_db}"]],
    "devices logs": [["{device}", "--db", "{good_db}"], ["d00", "--db", "{db}"],
                     ["d00", "--since", "yesterday", "--db", "{good_db}"],
                     ["d00", "--limit", "0", "--db", "{good_db}"],
                     ["d00", "--follow", "--interval", "0", "--db", "{good_db}"]],
    "devices tag": [["{device}", "k=v", "--db", "{good_db}"], ["d00", "k=v", "--db", "{db}"]],
    "devices send": [["{device}", "reboot", "--db", "{good_db}"], ["d00", "reboot", "--db", "{db}"]],
    "commands list": [["--device", "{device}", "--db", "{good_db}"], ["--db", "{db}"]],
    "commands show": [["{command}", "--db", "{good_db}"], ["op:1:1", "--db", "{db}"]],
    "readings export": [["{device}", "--db", "{good_db}"], ["d00", "-o", "{out}", "--db", "{good_db}"],
                        ["d00", "--db", "{db}"]],
    "readings gaps": [["--device", "{device}", "--db", "{good_db}"], ["--db", "{db}"]],
    "readings stats": [["--db", "{db}"]],
    "readings plot": [["{device}", "-o", "{png}", "--db", "{good_db}"],
                      ["d00", "-o", "{out}", "--db", "{good_db}"],
                      ["d00", "--raw", "{in}", "-o", "{png}", "--db", "{good_db}"],
                      ["d00", "-o", "{png}", "--db", "{db}"]],
    "rollout create": [["--workflow", "{ref}", "--target", "all", "--db", "{good_db}"],
                       ["--workflow", "greenhouse@2", "--target", "all", "--db", "{db}"],
                       # a schedule refused as it stands
                       [*WF2, "--start-at", "2020-01-01T00:00:00Z"], [*WF2, "--start-at", "soon"],
                       [*WF2, "--start-at", "2099-01-01T01:00"], [*WF2, "--window", "Mon-Fri 1-5"],
                       [*WF2, "--window", "Mon 25:00-26:00"], [*WF2, "--window", "Caturday 01:00-02:00"],
                       [*WF2, "--window-tz", "tag.tz"],
                       [*WF2, "--window", "Mon 01:00-02:00", "--window-tz", "Atlantis/Capital"],
                       # a bundle: neither or both of --workflow and --bundle, an unknown one
                       ["--target", "all", "--db", "{good_db}"], [*WF2, "--bundle", "app@1"],
                       ["--bundle", "{ref}", "--target", "all", "--db", "{good_db}"],
                       # a preview gate that cannot be read or names what the version lacks
                       [*WF2, "--preview-gate", "bogus"], [*WF2, "--preview-gate", "events.nope<=+1"],
                       [*WF2, "--preview", "--preview-since", "soon"]],
    "rollout preview": [*ROLLOUT_IDS, ["1", "--since", "soon", "--db", "{good_db}"],
                        ["1", "--alert", "hot", "--db", "{good_db}"]],
    "rollout start": ROLLOUT_IDS,
    "rollout pause": ROLLOUT_IDS,
    "rollout resume": ROLLOUT_IDS,
    "rollout cancel": ROLLOUT_IDS,
    "rollout retry": [[*t, "--failed"] for t in ROLLOUT_IDS],
    "rollout rollback": ROLLOUT_IDS,
    "rollout status": ROLLOUT_IDS,
    "rollout log": ROLLOUT_IDS,
    "rollout devices": ROLLOUT_IDS,
    "rollout list": [["--db", "{db}"]],
    "broker secret": [["{out}"]],
    "broker config": [
        ["{outdir}", "--fleet", "f", "--device", "a"],
        ["{fresh_dir}", "--fleet", "f", "--devices-file", "{in}"],
        ["{fresh_dir}", "--fleet", "f", "--device", "a", "--secret-file", "{in}"],
        ["{fresh_dir}", "--fleet", "f", "--device", "a", "--cafile", "{in}", "--certfile", "{in}",
         "--keyfile", "{in}"],
        ["{fresh_dir}", "--fleet", "f", "--device", "a", "--persistence-dir", "{outdir}"],
        ["{fresh_dir}", "--fleet", "f", "--device", "a", "--port", "{tcp_port}"],
    ],
    "board flash": [["--port", "{serial}", "-f", "{fw}"], ["--port", "/dev/ttyUSB0", "-f", "{in}"]],
    "board deploy": [
        ["--port", "{serial}", "-d", "x"],
        ["--port", "{serial}", "-d", "x", "--config", "{in}"],
        ["--port", "{serial}", "-d", "x", "--board", "{in}"],
        ["--port", "{serial}", "-d", "x", "--lib-dir", "{in}"],
        ["--port", "{serial}", "-d", "x", "--mqtt-password-file", "{in}"],
    ],
    "board image": [
        ["-f", "{in}", "-d", "x", "-o", "{fresh_dir}/f.bin", "-c", "{cfg}"],
        ["-f", "{fw}", "-d", "x", "-o", "{out}", "-c", "{cfg}"],
        ["-f", "{fw}", "-d", "x", "-o", "{fresh_dir}/f.bin", "-c", "{in}"],
        ["-f", "{fw}", "-d", "x", "-o", "{fresh_dir}/f.bin", "-c", "{cfg}", "--board", "{in}"],
    ],
    "board provision": [
        [*PROVISION, "--db", "{new_db}", "--out", "{fresh_dir}"],
        [*PROVISION, "--db", "{good_db}", "--out", "{fresh_dir}", "--firmware", "{in}"],
        [*PROVISION, "--db", "{good_db}", "--out", "{outdir}"],
        [*PROVISION, "--db", "{good_db}", "--out", "{fresh_dir}", "--board", "{in}"],
    ],
    "board monitor": [["--port", "{serial}", "--seconds", "1"]],
    "board profiles": [["{in}"]],
    "api": [["--db", "{db}"], ["--db", "{good_db}", "--host", "{host}"],
            ["--db", "{good_db}", "--port", "{tcp_port}"],
            ["--db", "{good_db}", "--certfile", "{in}", "--keyfile", "{cfg}"],
            ["--db", "{good_db}", "--certfile", "{cfg}", "--keyfile", "{in}"],
            ["--db", "{good_db}", "--certfile", "{cfg}"]],
    "bench api": [["--devices", "5"]],
    "devices summary": [["--db", "{db}"], ["--tag", "x", "--db", "{good_db}"]],
    "readings alerts": [["--device", "{device}", "--db", "{good_db}"], ["--db", "{db}"]],
    "readings dead-letters": [["--db", "{db}"]],
    "tokens create": [["--role", "viewer", "--name", "t", "--db", "{new_db}"],
                      ["--role", "root", "--name", "t", "--db", "{good_db}"],
                      ["--role", "viewer", "--name", "a b", "--db", "{good_db}"]],
    "tokens list": [["--db", "{db}"]],
    "tokens revoke": [["nobody", "--db", "{good_db}"], ["t", "--db", "{db}"]],
}  # fmt: skip

# Parameters that take something from outside the command line: every one needs a hole in
# some template of its command.
RISKY_NAMES = {"db_url", "broker", "pg_url", "board", "host", "port"}
AS_PROCESS = {"serve"}  # run as a real process


def leaf_commands() -> dict[str, object]:
    """Every command of the app, by its path (``rollout create``)."""

    def walk(group, path):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                yield from walk(cmd, [*path, name])
            else:
                yield " ".join([*path, name]), cmd

    return dict(walk(get_command(app), []))


def risky_params(cmd) -> list:
    out = []
    for p in cmd.params:
        annotation = p.type_descriptor.annotation
        if (
            p.name in RISKY_NAMES
            or "Path" in str(annotation)
            or annotation is Path
            or (Path in typing.get_args(annotation))
        ):
            out.append(p)
    return out


def hole_of(template: list[str]) -> int | None:
    for i, arg in enumerate(template):
        if arg.strip("{}") in HOLES and arg.startswith("{"):
            return i
    return None


def test_every_command_and_risky_option_is_covered():
    commands = leaf_commands()
    assert set(TEMPLATES) == set(commands), (
        f"commands without templates: {sorted(set(commands) - set(TEMPLATES))}; "
        f"templates of no command: {sorted(set(TEMPLATES) - set(commands))}"
    )
    uncovered = []
    for name, cmd in commands.items():
        holed_options = set()
        positional_hole = False
        for t in TEMPLATES[name]:
            for i, arg in enumerate(t):
                if arg.startswith("{") and arg.strip("{}") in HOLES:
                    if i and t[i - 1].startswith("-"):
                        holed_options.add(t[i - 1])
                    else:
                        positional_hole = True
        for p in risky_params(cmd):
            if p.param_type_name == "argument":
                ok = positional_hole
            else:
                ok = bool(set(p.opts) & holed_options)
            if not ok:
                uncovered.append(f"{name} {p.opts if p.param_type_name == 'option' else p.name}")
    assert not uncovered, f"risky parameters no template puts a bad value in: {uncovered}"


# --- the bad values ---------------------------------------------------------------------------


@dataclass
class Bad:
    """A bad value, and a piece of text the error line must contain (it names the problem)."""

    value: str
    mark: str
    absent: Path | None = None  # a file that must still not exist afterwards


@dataclass
class World:
    tmp: Path
    good_db: str
    closed_port: int
    files: dict[str, str]


def bad_values(kind: str, w: World) -> list[Bad]:
    missing, directory, binary = w.tmp / "missing.json", w.tmp / "adir", w.tmp / "binary.bin"
    pg_down = f"postgresql://postgres@127.0.0.1:{w.closed_port}/test"
    dbs = [
        Bad(pg_down, str(w.closed_port)),
        Bad(f"sqlite:///{binary}", "binary.bin"),
        Bad(f"sqlite:///{w.tmp / 'nodir' / 'o.db'}", "nodir"),
        Bad(f"sqlite:///{directory}", "adir"),
    ]
    return {
        "in": [Bad(str(missing), "missing.json"), Bad(str(directory), "adir"),
               Bad(str(binary), "binary.bin")],
        "out": [Bad(str(directory), "adir"), Bad(str(binary / "x"), "binary.bin")],
        "outdir": [Bad(str(binary), "binary.bin")],
        "db": [*dbs, Bad(f"sqlite:///{w.tmp / 'absent.db'}", "absent.db", w.tmp / "absent.db")],
        "new_db": dbs,
        "pg": [Bad(pg_down, str(w.closed_port))],
        "broker": [Bad("http://127.0.0.1:1883", "http://127.0.0.1:1883"),
                   Bad("nonsense", "nonsense"),
                   Bad(f"mqtt://127.0.0.1:{w.closed_port}", str(w.closed_port))],
        "host": [Bad("mqtt://127.0.0.1", "mqtt://127.0.0.1"), Bad("nonsense.invalid", "nonsense.invalid")],
        "closed_port": [Bad(str(w.closed_port), str(w.closed_port))],
        "tcp_port": [Bad("0", "port 0"), Bad("65536", "port 65536")],
        "serial": [Bad("/dev/orrery-no-such-port", "/dev/orrery-no-such-port")],
        "device": [Bad("nope", "nope")],
        "rollout": [Bad("999", "999")],
        "command": [Bad("op:nope:1", "op:nope:1")],
        "ref": [Bad("nope@9", "nope@9")],
    }[kind]  # fmt: skip


HOLES = ("in", "out", "outdir", "db", "new_db", "pg", "broker", "host", "closed_port", "tcp_port",
         "serial", "device", "rollout", "command", "ref")  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    tmp = tmp_path_factory.mktemp("bad-inputs")
    (tmp / "adir").mkdir()
    (tmp / "binary.bin").write_bytes(bytes(range(256)) * 8)
    fw = tmp / "micropython.bin"
    fw.write_bytes(espimage.synthetic_firmware("esp32"))
    cfg = tmp / "cfg.json"
    cfg.write_text(json.dumps({"fleet": "f", "broker": {"host": "10.0.0.2", "port": 1883, "tls": False},
                               "hmac_key": "00" * 16}))  # fmt: skip
    good_db = f"sqlite:///{tmp / 'good.db'}"
    app = tmp / "app-1.0.0.orb"
    app.write_bytes(bundle_file.build_bundle("1.0.0").encode())
    env = {"ORRERY_SECRET": SECRET}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for f in (workflows.GREENHOUSE_V1, workflows.GREENHOUSE):
            ok("workflow", "push", str(f), "--db", good_db)
        ok("devices", "add", "d00", "d01", "--fleet", "f1", "--db", good_db)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return World(tmp, good_db, free_port(), {"fw": str(fw), "cfg": str(cfg), "bundle": str(app)})


def ok(*args: str) -> None:
    r = runner.invoke(app, list(args))
    assert r.exit_code == 0, r.output


def cases() -> list:
    out = []
    for name in sorted(TEMPLATES):
        for n, t in enumerate(TEMPLATES[name]):
            i = hole_of(t)
            kind = None if i is None else t[i].strip("{}")
            count = 1 if kind is None else len(bad_values(kind, _DUMMY))
            for k in range(count):
                out.append(
                    pytest.param(
                        name, n, k, id=f"{name.replace(' ', '-')}-{n}-{kind or 'as-is'}-{k}"
                    )
                )
    return out


_DUMMY = World(Path("/nonexistent"), "", 1, {})


@pytest.fixture(autouse=True)
def _env(world, monkeypatch, tmp_path):
    monkeypatch.setenv("ORRERY_SECRET", SECRET)
    for var in ("ORRERY_SECRET_FILE", "ORRERY_DB_URL", "ORRERY_BROKER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(("name", "template", "variant"), cases())
def test_bad_input_gives_one_error_line(world, tmp_path, name, template, variant):
    t = TEMPLATES[name][template]
    i = hole_of(t)
    bad = None if i is None else bad_values(t[i].strip("{}"), world)[variant]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    values = {"good_db": world.good_db, "wf": GREENHOUSE, "png": str(tmp_path / "p.png"),
              "fresh_dir": str(fresh), **world.files}  # fmt: skip
    args = [*name.split()]
    for arg in t:
        if arg.startswith("{") and arg.strip("{}") in HOLES:
            args.append(bad.value)
        else:
            args.append(arg.format(**values))
    code, stdout, stderr = invoke(name, args, tmp_path)
    shown = (
        f"$ orrery {' '.join(args)}\n--- exit {code}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    )
    assert code not in (0, None), shown
    assert "Traceback" not in stdout + stderr, shown
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("{")]
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    assert "unexpected" not in lines[0], shown  # handled on purpose, not by the last resort
    if bad is not None:
        assert bad.mark in lines[0], shown
        if bad.absent is not None:
            assert not bad.absent.exists(), f"{shown}\n--- it created {bad.absent}"
    assert not (tmp_path / "orrery.db").exists(), f"{shown}\n--- it created ./orrery.db"


def invoke(name: str, args: list[str], cwd: Path) -> tuple[int, str, str]:
    if name in AS_PROCESS:
        env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
        p = subprocess.run([sys.executable, "-m", "cloud.orrery.cli", *args], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        return p.returncode, p.stdout, p.stderr
    r = runner.invoke(app, args)
    return r.exit_code, r.stdout, r.stderr


def test_read_only_commands_never_create_the_default_database(tmp_path, monkeypatch):
    # the report: `orrery rollout list` in another directory silently created ./orrery.db
    monkeypatch.chdir(tmp_path)
    for args in (["rollout", "list"], ["devices", "list"], ["readings", "stats"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 1, r.output
        assert r.stderr.strip() == (
            f"error: no database at {tmp_path / 'orrery.db'} (sqlite:///orrery.db): give --db "
            "or set ORRERY_DB_URL"
        )
        assert not (tmp_path / "orrery.db").exists()
