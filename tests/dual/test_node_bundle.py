"""An app bundle download that survives reboots, on the node (both runtimes): the protocol is
firmware/bundle.py's (``install_bundle`` acks IN_PROGRESS ``next K/N``; a download of the same
version and sha256 on flash resumes from its last whole chunk). test_bundle_resume.py checks
the bookkeeping case by case. (A module of its own: each dual module runs in one MicroPython
heap, collection off.)
"""

import binascii
import hashlib
import os

from _nodekit import _acks, _board, _cmd, _run

from shared import bundle
from shared.wire import codec

CS = 16  # bytes per chunk: a bundle of 7 chunks, the last one short


def _blob(text=b"print('v2')\n"):
    blob = bundle.pack([("firmware/__init__.py", b""), ("firmware/main.py", text * 4)])
    return blob, binascii.hexlify(hashlib.sha256(blob).digest()).decode()


def _start(node, clock, cmd_id, blob, digest, version="2.0.0", cs=CS):
    n = (len(blob) + cs - 1) // cs
    args = {"version": version, "sha256": digest, "size": len(blob), "chunk_size": cs, "chunks": n}
    _cmd(node, clock, cmd_id, "install_bundle", args)
    _run(node, clock, 400)
    return n


def _chunk(node, clock, blob, i, version="2.0.0", cs=CS):
    data = binascii.b2a_base64(blob[i * cs : (i + 1) * cs]).decode().strip()
    _cmd(node, clock, "k" + str(i) + "-" + str(clock.ticks_ms()), "bundle_chunk",
         {"version": version, "index": i, "data": data})  # fmt: skip
    _run(node, clock, 300)


def _ack(link, cmd_id):
    got = [(a["code"], a["detail"]) for a in _acks(link) if a["id"] == cmd_id]
    return got[-1] if got else None


def _last(link):
    a = _acks(link)[-1]
    return a["code"], a["detail"]


def _part(node):
    return os.stat(node.root + "/bundle.part")[6]


def _reboot(node, clock, n=[0]):  # noqa: B006 - a counter for distinct boot ids
    n[0] += 1
    again, _, link = _board(clock=clock, root=node.root, rand4=bytes([9, 9, 9, n[0]]))
    return again, link


def test_a_download_resumes_after_a_reboot_from_its_last_whole_chunk():
    blob, digest = _blob()
    node, clock, link = _board()
    n = _start(node, clock, "b1", blob, digest)
    assert n == 7 and len(blob) % CS
    assert _ack(link, "b1") == (codec.IN_PROGRESS, "next 0/7")
    for i in range(3):
        _chunk(node, clock, blob, i)
    assert _last(link) == (codec.OK, "next 3/7")
    assert _part(node) == 3 * CS
    node, link = _reboot(node, clock)  # RAM is gone; bundle.json and bundle.part are not
    n = _start(node, clock, "b2", blob, digest)
    assert _ack(link, "b2") == (codec.IN_PROGRESS, "next 3/7 (resumed)")
    _chunk(node, clock, blob, 1)
    assert _last(link) == (codec.OK, "chunk 1 already stored")
    _chunk(node, clock, blob, 5)
    assert _last(link) == (codec.REJECTED, "next 3/7"), "a gap names the chunk expected next"
    for i in range(3, 6):
        _chunk(node, clock, blob, i)
    assert _last(link) == (codec.OK, "next 6/7")
    node, link = _reboot(node, clock)
    _chunk(node, clock, blob, 6)  # no install_bundle after this reboot: restored from flash
    _run(node, clock, 1000)  # checked, unpacked, recorded: one step a pass
    code, detail = _last(link)
    assert code == codec.OK and detail == "bundle 2.0.0 stored in slot b; rebooting into it"
    import json

    with open(node.root + "/app.json") as f:
        app = json.load(f)
    assert app["trial"] == "b" and app["version"] == "2.0.0" and app["cmd"] == "b2"
    assert app.get("prev_version") is None, "before it, the board ran no bundle"
    names = os.listdir(node.root)
    assert "bundle.part" not in names and "bundle.json" not in names
    with open(node.root + "/app_b/firmware/main.py", "rb") as f:
        assert f.read() == b"print('v2')\n" * 4
