"""Write ``tests/golden/protocol.json``: protocol inputs, their exact encodings, and the decoding.

``python -m tools.dev.golden.protocol`` rewrites the file; ``--check`` exits 1 if it is out of date.
The dual tests re-encode every input on CPython and on MicroPython and compare the bytes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.wire import codec

OUT = Path(__file__).resolve().parents[3] / "tests" / "golden" / "protocol.json"
KEY = bytes(range(1, 33))
ANCHOR = [12, 345, 1_700_000_000, 678]


def _batch_case(name, boot_id, first_seq, records, flags=0, anchor=None):
    data = codec.encode_batch(boot_id, first_seq, records, flags, anchor)
    b, err = codec.decode_batch(data)
    assert err is None, err
    return {
        "name": name,
        "args": {
            "boot_id": boot_id,
            "first_seq": first_seq,
            "records": [list(r) for r in records],
            "flags": flags,
            "anchor": anchor,
        },
        "hex": data.hex(),
        "decoded": {
            "boot_id": b.boot_id,
            "first_seq": b.first_seq,
            "count": b.count,
            "flags": b.flags,
            "historical": b.historical,
            "anchor": None if b.anchor is None else list(b.anchor),
            "records": [list(r) for r in b.records],
        },
    }


def _log_case(name, boot_id, first_seq, lines):
    data = codec.encode_log(boot_id, first_seq, lines)
    obj, err = codec.decode_log(data)
    assert err is None, err
    args = {"boot_id": boot_id, "first_seq": first_seq, "lines": [list(x) for x in lines]}
    return {"name": name, "args": args, "hex": data.hex(), "decoded": _plain(obj)}


def _plain(v):
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _message_case(name, kind, args):
    enc = getattr(codec, "encode_" + kind)
    dec = getattr(codec, "decode_" + ("state" if kind == "will" else kind))
    data = enc(*args)
    obj, err = dec(data)
    assert err is None, err
    return {"name": name, "kind": kind, "args": args, "hex": data.hex(), "decoded": _plain(obj)}


def _envelope_case(name, args):
    data = codec.sign_command(KEY, *args)
    cmd, err = codec.verify_envelope(KEY, data)
    assert err is None, err
    return {"name": name, "key": KEY.hex(), "args": args, "hex": data.hex(), "decoded": cmd}


def build() -> dict:
    """Every golden case, as the JSON-able dict written to the file."""
    ramp = [
        (i // 4, (i % 4) * 250, (i * 131) % 65535 - 32767, i % 8) for i in range(codec.MAX_BATCH)
    ]
    batches = [
        _batch_case("one_record", 1, 0, [(0, 0, 0, 0)]),
        _batch_case(
            "historical_synced",
            0x2A2A2A2A,
            1000,
            [(10, 0, 123, 0), (10, 250, -123, 1), (11, 999, 32767, 255)],
            codec.HISTORICAL,
            ANCHOR,
        ),
        _batch_case("synced_live", 77, 5, [(2, 1, -32767, 3)], 0, [0, 0, 0, 0]),
        _batch_case(
            "limits",
            codec.SEQ_MAX,
            codec.SEQ_MAX - 1,
            [(codec.SEQ_MAX, 999, 32767, 255), (codec.SEQ_MAX, 999, -32767, 0)],
            0,
            [codec.SEQ_MAX, 999, 0xFFFFFFFF, 999],
        ),
        _batch_case("max_batch", 9, 123456, ramp, codec.HISTORICAL),
    ]
    messages = [
        _message_case(
            "state_full",
            "state",
            [
                True,
                "0.1.0+g1a2b",
                "greenhouse",
                3,
                "sha256:0f1e2d3c",
                7,
                12,
                True,
                ANCHOR,
                41,
                {"rssi": -61, "heap": 81234, "reset": "power_on", "ok": True, "note": None},
                "6.3",
            ],
        ),
        _message_case(
            "state_no_workflow",
            "state",
            [True, "0.1.0", None, None, None, 1, 0, False, None, None],
        ),
        _message_case(
            "state_offline",
            "state",
            [False, "0.1.0", "wf_a", 0, "abc", 2, 0, False, None, 0],
        ),
        _message_case("will", "will", [123456]),
        _message_case("event", "event", [7, 42, 3600, 5, "heating", "temp_high", -1200]),
        _message_case("event_no_value", "event", [7, 43, 3601, 0, "idle", "timer.done", None]),
        _message_case("ack_ok", "ack", ["cmd-1", codec.OK, ""]),
        _message_case(
            "ack_failed_text", "ack", ["2024:07:1", codec.FAILED, 'health "window" failed\n° C']
        ),
        _message_case("ack_untrusted", "ack", [None, codec.BAD_SIGNATURE, "signature mismatch"]),
        _message_case("loss_full", "loss", [7, 100, 611, "store_full"]),
        _message_case("loss_corrupt", "loss", [7, 9, 9, "corrupt"]),
        _message_case("pull", "pull", [codec.SEQ_MAX]),
    ]
    logs = [
        _log_case("boot_and_link_up", 7, 0, [(0, 5, codec.LOG_BOOT, 0, 0), (1, 20, 3, 4, 0)]),
        _log_case(
            "limits",
            codec.SEQ_MAX,
            codec.SEQ_MAX - 1,
            [(codec.SEQ_MAX, 999, 255, -32768, 32767), (0, 0, codec.LOG_STATE, 3, -1)],
        ),
    ]
    envelopes = [
        _envelope_case("reboot", ["c1", "dev-01", "reboot", {}, 1_700_000_000, 1_700_000_600]),
        _envelope_case(
            "set_config",
            [
                "2024-07-01:set.1",
                "dev-01",
                "set_config",
                {
                    "period_ms": 250,
                    "label": 'Gewächshaus "Nord"\t1',
                    "chans": [0, 1, 7],
                    "nested": {"z": None, "a": False},
                },
                1_700_000_000,
                1_700_604_800,
            ],
        ),
        _envelope_case("unknown_kind", ["c9", "dev-01", "launch", {"n": -1}, 5, 6]),
    ]
    topics = [
        {"args": ["fleet-a", "dev_01", k], "topic": codec.topic("fleet-a", "dev_01", k)}
        for k in codec.TOPIC_KINDS
    ]
    boot_ids = [
        {"rand": r, "boot_id": codec.new_boot_id(bytes.fromhex(r))}
        for r in ("00000000", "01000000", "ffffffff", "78563412", "000000c0")
    ]
    event_times = [
        {"anchor": ANCHOR, "up_s": u, "up_ms": m, "unix_ms": codec.event_time_ms(ANCHOR, u, m)}
        for u, m in ((12, 345), (0, 0), (11, 999), (13, 0), (codec.SEQ_MAX, 999))
    ]
    return {
        "batches": batches,
        "messages": messages,
        "logs": logs,
        "envelopes": envelopes,
        "topics": topics,
        "boot_ids": boot_ids,
        "event_times": event_times,
    }


def render() -> str:
    """The file's exact text: one case per line, so a diff shows which case changed."""
    sections = []
    for name, cases in sorted(build().items()):
        lines = ",\n".join("  " + json.dumps(c, sort_keys=True, ensure_ascii=False) for c in cases)
        sections.append(f' "{name}": [\n{lines}\n ]')
    return "{\n" + ",\n".join(sections) + "\n}\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.dev.golden.protocol", description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date: run python -m tools.dev.golden.protocol", file=sys.stderr)
            return 1
        print(f"{OUT.name} is up to date")
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
