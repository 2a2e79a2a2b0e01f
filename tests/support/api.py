"""A fleet database behind the HTTP API for tests: boards' messages go through the real ingest,
workflows through the registry, and requests through FastAPI's TestClient to the real app
(``create_app``), as each role's token."""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient

from cloud.orrery.api.app import create_app
from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import API_TOKENS
from cloud.orrery.fleet import devices, registry, tokens
from cloud.orrery.fleet.rollout.orchestrator import Orchestrator
from cloud.orrery.ingest.handler import Ingest, Message
from cloud.orrery.sim import workflows
from shared.wire import codec
from shared.workflow import compiler

WF = workflows.DIR
V1 = compiler.compile((WF / "greenhouse_v1.json").read_bytes())
V2 = compiler.compile((WF / "greenhouse.json").read_bytes())
SECRET = "api-test-fleet-secret-0123456789"
NAMES = [f"d{i:02d}" for i in range(10)]
ANCHOR = (100, 0, 1_790_000_000, 0)
ROLES = ("viewer", "operator", "admin")


def state(name: str, ver: int | None, online: bool = True) -> Message:
    """A board's state message: running greenhouse ``ver``, or gone (its will)."""
    t = codec.topic("f1", name, codec.STATE)
    if not online:
        return Message(t, codec.encode_will(7))  # its boot's will
    wf = {1: ("greenhouse", 1, V1.hash), 2: ("greenhouse", 2, V2.hash)}[ver]
    return Message(t, codec.encode_state(True, "1.2.0", *wf, 7, 0, True, ANCHOR, None))


class ApiFleet:
    """Ten boards (d00..d09, fleet f1, esp32-devkitc; d00..d07 on greenhouse v1, d08 and d09
    on v2, all online), readings of d00 (temperature, channel 5), a token per role named after
    it, and a TestClient on the app."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)
        self.ingest = Ingest(self.engine, reorder_window_ms=0)
        self.orch = Orchestrator(self.engine, SECRET.encode(), owner="serve")
        with self.engine.begin() as conn:
            for f in ("greenhouse_v1.json", "greenhouse.json"):
                registry.push(conn, (WF / f).read_bytes(), None, 0)
        devices.register(self.engine, "f1", "esp32-devkitc", NAMES)
        self.send(*[state(n, 1) for n in NAMES[:8]], *[state(n, 2) for n in NAMES[8:]])
        t = "orrery/f1/d00/up/readings"
        recs = [(100 + i, 0, 2150 + i, 5) for i in range(5)]
        self.send(Message(t, codec.encode_batch(7, 1, recs, codec.SYNCED, ANCHOR)))
        self.ingest.reconcile()
        self.tokens: dict[str, str] = {}
        with self.engine.begin() as conn:
            for r in ROLES:
                self.tokens[r], _ = tokens.create(conn, r, r, by="test")
        self.client = TestClient(create_app(engine=self.engine), raise_server_exceptions=False)

    def send(self, *msgs: Message) -> None:
        """Messages from boards, through the real ingest."""
        assert self.ingest.handle(list(msgs)).dead == 0

    def call(self, method: str, path: str, as_: str | None = "viewer", **kw: Any):
        """``method path`` (under /api/v1) as the token of role ``as_`` (None: no token)."""
        headers = kw.pop("headers", {})
        if as_ is not None:
            headers["Authorization"] = f"Bearer {self.tokens.get(as_, as_)}"
        return self.client.request(method, "/api/v1" + path, headers=headers, **kw)

    def get(self, path: str, as_: str | None = "viewer", **kw: Any):
        return self.call("GET", path, as_, **kw)

    def post(self, path: str, as_: str | None = "operator", **kw: Any):
        return self.call("POST", path, as_, **kw)

    def ok(self, method: str, path: str, as_: str = "viewer", status: int = 200, **kw: Any):
        """The JSON of a request that must succeed with ``status``."""
        r = self.call(method, path, as_, **kw)
        assert r.status_code == status, (r.status_code, r.text)
        return r.json()

    def error(self, method: str, path: str, status: int, as_: str | None = "admin", **kw: Any):
        """The message of a request that must fail with ``status`` (a JSON error body)."""
        r = self.call(method, path, as_, **kw)
        assert r.status_code == status, (r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json")
        body = r.json()
        assert set(body) == {"error"} and body["error"], body
        return body["error"]

    def token_id(self, name: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(API_TOKENS.c.id).where(API_TOKENS.c.name == name)
            ).scalar_one()

    def close(self) -> None:
        self.client.close()
        self.engine.dispose()


def fleet_secret_env() -> dict[str, str]:
    """The environment that gives the API the test fleet's secret."""
    env = {k: v for k, v in os.environ.items() if k != "ORRERY_SECRET_FILE"}
    env["ORRERY_SECRET"] = SECRET
    return env
