"""What the API added to the fleet layer, the CLI has too: device filters, the fleet summary,
dead letters and alerts, the same answers as the API's."""

from __future__ import annotations

import json

from cloud.orrery.ingest.handler import Message
from shared.wire import codec
from tests.support.api import state
from tests.support.cli import flat, run


def test_devices_list_filters_and_summary(fleet):
    run("devices", "tag", "d03", "site=north", "--db", fleet.url)
    fleet.send(state("d05", None, online=False))

    def names(*args: str) -> list[str]:
        out = run("devices", "list", *args, "--json", "--db", fleet.url).stdout
        return [d["device"] for d in json.loads(out)]

    assert names("--tag", "site=north") == ["d03"]
    assert names("--offline") == ["d05"]
    assert len(names("--online", "--profile", "esp32-devkitc")) == 9
    assert names("--profile", "other") == []
    r = run("devices", "list", "--tag", "site", "--db", fleet.url, ok=False)
    assert "--tag 'site': expected key=value" in flat(r.output)
    s = json.loads(run("devices", "summary", "--json", "--db", fleet.url).stdout)
    assert s == fleet.ok("GET", "/fleet")
    human = flat(run("devices", "summary", "--db", fleet.url).stdout)
    assert "10 device(s): 9 online, 1 offline" in human and "greenhouse@1 8" in human
    north = json.loads(run("devices", "summary", "--tag", "site=north", "--json", "--db", fleet.url).stdout)
    assert north["devices"] == 1 and north == fleet.ok("GET", "/fleet?tag=site=north")


def test_dead_letters_and_alerts(fleet):
    assert "no dead letters" in run("readings", "dead-letters", "--db", fleet.url).stdout
    fleet.ingest.handle([Message("orrery/f1/ghost/up/readings", codec.encode_batch(1, 1, [(1, 0, 1, 0)]))])
    rows = json.loads(run("readings", "dead-letters", "--json", "--db", fleet.url).stdout)
    assert rows == fleet.ok("GET", "/dead-letters")["items"] and len(rows) == 1
    assert "unknown device" in run("readings", "dead-letters", "--db", fleet.url).stdout
    assert json.loads(run("readings", "alerts", "--json", "--db", fleet.url).stdout) == []
    assert "no alerts" in run("readings", "alerts", "--device", "d00", "--db", fleet.url).stdout
    r = run("readings", "alerts", "--device", "nope", "--db", fleet.url, ok=False)
    assert "unknown device 'nope'" in r.output
