"""The console's browser tests: the API app (with its console) served by a real uvicorn on a
free port, on the ``ApiFleet`` database; the boards of that fleet acking installs through the
real ingest; Debian's chromium driven by Playwright."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import uvicorn

from cloud.orrery.api.app import create_app
from cloud.orrery.fleet import keys
from cloud.orrery.ingest.handler import Message
from shared.wire import codec
from tests.support.api import SECRET, ApiFleet, state
from tools.dev.mosquitto import free_port

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "console"


def chromium_path() -> str:
    """Debian's chromium; a missing one fails the test (``make setup`` installs it), never
    skips it."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make setup` installs Debian's chromium")
    return str(CHROMIUM)


class Server:
    """``create_app`` on ``engine`` under uvicorn in a thread, on a free port."""

    def __init__(self, engine) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(engine=engine), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="off")  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/console/login", timeout=2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the console did not answer within 20 s")

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class Boards:
    """The fleet's boards, as far as a rollout sees them: each checks its signed install
    command like a board does, acks IN_PROGRESS, reports the new version and acks OK."""

    def __init__(self, fleet: ApiFleet) -> None:
        self.fleet = fleet

    def install(self, out) -> str:
        """One board takes the install command ``out``; its name."""
        name = out.topic.split("/")[2]
        # the command is signed for the board's clock, which runs this far off the companion's
        skew = json.loads(json.loads(out.payload)["b"]).get("skew", 0)
        res, cmd, detail = codec.Verifier(keys.device_key(SECRET.encode(), name), name).check(
            out.payload, int(time.time()) + skew
        )
        assert (res, detail) == (codec.OK, ""), (name, detail)
        acks = codec.topic("f1", name, codec.ACKS)
        self.fleet.send(Message(acks, codec.encode_ack(cmd["id"], codec.IN_PROGRESS, "health")))
        self.fleet.send(state(name, 2))
        self.fleet.send(Message(acks, codec.encode_ack(cmd["id"], codec.OK, "")))
        return name


def shot(page, name: str) -> Path:
    """A screenshot of ``page`` kept as a test artifact (build/test-artifacts/console/)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def secret_env(monkeypatch) -> None:
    """The API signs rollbacks with the fleet secret of ``ApiFleet``."""
    monkeypatch.setenv("ORRERY_SECRET", SECRET)
    monkeypatch.delenv("ORRERY_SECRET_FILE", raising=False)
