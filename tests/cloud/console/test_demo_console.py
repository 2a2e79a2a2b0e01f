"""``orrery demo --console``: the console it keeps up at the end (URL and a viewer token
printed, the token logs in as a viewer, Ctrl-C ends it cleanly), and a taken port refused
before the demo starts."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tests.support.api import ApiFleet
from tools.dev.mosquitto import free_port

REPO = Path(__file__).resolve().parents[3]


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("ORRERY_")}
    e["PYTHONPATH"] = str(REPO)
    return e


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kw):
        return None


def test_the_demo_console_prints_a_viewer_token_and_stops_on_ctrl_c(tmp_path):
    url = f"sqlite:///{tmp_path / 'orrery.db'}"
    ApiFleet(url).close()
    port = free_port()
    code = (
        f"from cloud.orrery.cli.demo import serve_console; serve_console({url!r}, {port}, 1, False)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], env=env(), text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}/console/"
        deadline = time.monotonic() + 30
        while True:
            assert p.poll() is None, p.communicate()
            try:
                urllib.request.urlopen(base + "login", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the console did not come up"
                time.sleep(0.2)
        opener = urllib.request.build_opener(NoRedirect)
        body = urllib.parse.urlencode({"token": "orrery_wrong"}).encode()
        try:
            opener.open(base + "login", data=body, timeout=5)
            raise AssertionError("a wrong token logged in")
        except urllib.error.HTTPError as e:
            assert e.code == 401
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert f"Web console: {base}" in out and "Traceback" not in out + err
    token = re.search(r"Viewer token: (orrery_\S+)", out).group(1)
    assert out.rstrip().endswith("console stopped")
    from cloud.orrery.db.engine import engine_for
    from cloud.orrery.fleet import tokens

    engine = engine_for(url)
    with engine.begin() as conn:
        who = tokens.authenticate(conn, token)
    engine.dispose()
    assert who is not None and who.role == "viewer"


def test_a_taken_console_port_is_refused_before_the_demo(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "cloud.orrery.cli", "demo", "--console", "--console-port",
             str(port), "--out", str(tmp_path)],
            env=env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"--console-port {port}: cannot listen on 127.0.0.1:{port}" in " ".join(r.stderr.split())
    assert not (tmp_path / "orrery.db").exists()
