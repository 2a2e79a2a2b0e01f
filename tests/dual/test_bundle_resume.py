"""The bookkeeping of an app bundle download on flash, case by case (both runtimes): what
``install_bundle`` resumes, what a chunk after a reboot finds, what a torn chunk costs.

``firmware.bundle.handle`` runs here on a stand-in for the node (its flash directory, the
download in RAM, the ids of the command and its acks); a "reboot" is a new stand-in on the
same directory. test_node_bundle.py runs the whole download on the node.
"""

import binascii
import hashlib
import json
import os

from _util import MICROPYTHON

from firmware import bundle
from shared import bundle as archive
from shared.wire import codec

CS = 16  # bytes per chunk
_n = [0]


class _NoWorkflow:
    ex = None  # no workflow runs: every state is safe (firmware.safe)


class _Uptime:
    s = 0


class _Node:
    def __init__(self, root):
        self.root = root
        self.wf = _NoWorkflow()
        self.up = _Uptime()
        self.bundle = None
        self.current_cmd = None
        self.reboot_requested = False
        self.later = []

    def ack_later(self, cmd_id, code, detail):
        self.later.append((cmd_id, code, detail))


def _root():
    _n[0] += 1
    if MICROPYTHON:
        os.mkdir("/flash/r" + str(_n[0]))
        return "/flash/r" + str(_n[0])
    import tempfile

    return tempfile.mkdtemp()


def _blob(text=b"print('v2')\n"):
    blob = archive.pack([("firmware/__init__.py", b""), ("firmware/main.py", text * 4)])
    return blob, binascii.hexlify(hashlib.sha256(blob).digest()).decode()


def _do(node, cmd_id, kind, args):
    # run a command as the node does: the ack, or a job's return value after its passes
    node.current_cmd = cmd_id
    r = bundle.handle(node, kind, args)
    if isinstance(r, tuple):
        return r
    try:
        while True:
            next(r)
    except StopIteration as e:
        return e.value


def _start(node, cmd_id, blob, digest, version="2.0.0", cs=CS):
    n = (len(blob) + cs - 1) // cs
    args = {"version": version, "sha256": digest, "size": len(blob), "chunk_size": cs, "chunks": n}
    return _do(node, cmd_id, "install_bundle", args)


def _chunk(node, blob, i, version="2.0.0", cs=CS):
    data = binascii.b2a_base64(blob[i * cs : (i + 1) * cs]).decode().strip()
    return _do(node, "k" + str(i), "bundle_chunk", {"version": version, "index": i, "data": data})


def _part(root):
    with open(root + "/bundle.part", "rb") as f:
        return f.read()


def test_a_fresh_download_then_a_resume_after_a_reboot():
    blob, digest = _blob()
    assert len(blob) % CS and (len(blob) + CS - 1) // CS == 7
    root = _root()
    node = _Node(root)
    assert _start(node, "b1", blob, digest) == (codec.IN_PROGRESS, "next 0/7")
    for i in range(3):
        assert _chunk(node, blob, i) == (codec.OK, "next {}/7".format(i + 1))
    with open(root + "/bundle.json") as f:
        st = json.load(f)
    assert st == {"version": "2.0.0", "sha256": digest, "size": len(blob), "chunk_size": CS,
                  "chunks": 7, "cmd": "b1"}  # fmt: skip
    node = _Node(root)  # a reboot: the download is on flash only
    assert _start(node, "b2", blob, digest) == (codec.IN_PROGRESS, "next 3/7 (resumed)")
    assert _chunk(node, blob, 0) == (codec.OK, "chunk 0 already stored")
    assert _chunk(node, blob, 4) == (codec.REJECTED, "next 3/7")
    assert _part(root) == blob[: 3 * CS]


def test_a_chunk_after_a_reboot_restores_the_download_from_flash():
    blob, digest = _blob()
    root = _root()
    node = _Node(root)
    _start(node, "b1", blob, digest)
    for i in range(2):
        _chunk(node, blob, i)
    node = _Node(root)
    assert _chunk(node, blob, 3) == (codec.REJECTED, "next 2/7")
    assert _chunk(node, blob, 2) == (codec.OK, "next 3/7")
    node = _Node(root)
    assert _chunk(node, blob, 0, version="1.0.0") == (
        codec.REJECTED,
        "chunk is for version '1.0.0', downloading '2.0.0'",
    )


def test_a_torn_chunk_is_cut_off_and_fetched_again():
    blob, digest = _blob()
    root = _root()
    node = _Node(root)
    _start(node, "b1", blob, digest)
    for i in range(4):
        _chunk(node, blob, i)
    with open(root + "/bundle.part", "ab") as f:  # chunk 4, cut short by a power cut
        f.write(blob[4 * CS : 4 * CS + 5])
    node = _Node(root)
    assert _start(node, "b2", blob, digest) == (codec.IN_PROGRESS, "next 4/7 (resumed)")
    assert _part(root) == blob[: 4 * CS]
    # the same after a reboot when the next chunk comes first
    with open(root + "/bundle.part", "ab") as f:
        f.write(b"\xff" * 9)
    node = _Node(root)
    assert _chunk(node, blob, 4) == (codec.OK, "next 5/7")
    assert _part(root) == blob[: 5 * CS]


def test_a_whole_download_keeps_its_last_chunk_to_fetch():
    # bytes for every chunk, but the power went before the install finished: the last chunk
    # is fetched again, since it is the one that completes the download
    blob, digest = _blob()
    root = _root()
    node = _Node(root)
    _start(node, "b1", blob, digest)
    for i in range(6):
        _chunk(node, blob, i)
    with open(root + "/bundle.part", "ab") as f:
        f.write(blob[6 * CS :])
    node = _Node(root)
    assert _start(node, "b2", blob, digest) == (codec.IN_PROGRESS, "next 6/7 (resumed)")
    code, detail = _chunk(node, blob, 6)
    assert code == codec.OK and detail.startswith("bundle 2.0.0 stored in slot b")
    assert node.reboot_requested
    names = os.listdir(root)
    assert "bundle.part" not in names and "bundle.json" not in names
    with open(root + "/app.json") as f:
        app = json.load(f)
    assert app["trial"] == "b" and app["version"] == "2.0.0" and app["cmd"] == "b2"


def test_another_sha256_or_version_starts_afresh():
    blob, digest = _blob()
    other, odigest = _blob(b"print('v3')\n")
    root = _root()
    node = _Node(root)
    _start(node, "b1", blob, digest)
    for i in range(3):
        _chunk(node, blob, i)
    n = (len(other) + CS - 1) // CS
    assert _start(node, "b2", other, odigest) == (codec.IN_PROGRESS, "next 0/{}".format(n))
    assert _part(root) == b""
    _chunk(node, other, 0)
    node = _Node(root)
    assert _start(node, "b3", other, odigest, "3.0.0") == (codec.IN_PROGRESS, "next 0/{}".format(n))


def test_another_chunk_size_counts_the_bytes_held_anew():
    blob, digest = _blob()
    root = _root()
    node = _Node(root)
    _start(node, "b1", blob, digest)
    for i in range(5):
        _chunk(node, blob, i)  # 80 bytes: two whole chunks of 32, and 16 bytes cut off
    node = _Node(root)
    n = (len(blob) + 31) // 32
    assert _start(node, "b2", blob, digest, cs=32) == (
        codec.IN_PROGRESS,
        "next 2/{} (resumed)".format(n),
    )
    assert _part(root) == blob[:64]
    assert _chunk(node, blob, 2, cs=32) == (codec.OK, "next 3/{}".format(n))


def test_a_repeated_install_resumes_and_takes_the_final_ack():
    blob, digest = _blob()
    root = _root()
    node = _Node(root)
    _start(node, "b1", blob, digest)
    _chunk(node, blob, 0)
    assert _start(node, "b2", blob, digest) == (codec.IN_PROGRESS, "next 1/7 (resumed)")
    for i in range(1, 7):
        _chunk(node, blob, i)
    with open(root + "/app.json") as f:
        assert json.load(f)["cmd"] == "b2", "the newest install_bundle gets the final result"


def test_refused_chunks_and_installs_say_why():
    blob, digest = _blob()
    node = _Node(_root())
    assert _chunk(node, blob, 0) == (codec.REJECTED, "no bundle download in progress")
    _start(node, "b1", blob, digest)
    assert _chunk(node, blob[:CS] + blob[: 2 * CS], 0, cs=2 * CS) == (
        codec.REJECTED,
        "chunk 0 must be 16 bytes, not 32",
    )
    assert _chunk(node, blob, 7)[1] == "index must be an int in [0, 7)"
    args = {"version": "2.0.0", "sha256": digest, "size": len(blob), "chunk_size": CS, "chunks": 3}
    code, detail = _do(node, "b2", "install_bundle", args)
    assert code == codec.REJECTED and detail.startswith("chunks must be size / chunk_size")
    del args["chunk_size"]
    assert _do(node, "b3", "install_bundle", args) == (
        codec.REJECTED,
        "chunk_size must be a positive int",
    )
    for bad in ("", "x" * 65, "1.0\n", 7):  # the state message reports it as fw
        args = {"version": bad, "sha256": digest, "size": len(blob), "chunk_size": CS, "chunks": 7}
        assert _do(node, "b4", "install_bundle", args) == (
            codec.REJECTED,
            "version must be 1..64 printable chars",
        )
    args["version"], args["sha256"] = "2.0.0", "abc"
    assert _do(node, "b5", "install_bundle", args) == (
        codec.REJECTED,
        "sha256 must be 64 hex digits",
    )
    # the download in progress is untouched by the refused installs
    assert _chunk(node, blob, 0) == (codec.OK, "next 1/7")


def test_a_download_that_does_not_match_its_sha256_is_dropped():
    blob, digest = _blob()
    root = _root()
    node = _Node(root)
    _start(node, "b1", blob, "0" * 64)
    for i in range(6):
        _chunk(node, blob, i)
    assert _chunk(node, blob, 6) == (codec.FAILED, "bundle does not match its sha256")
    assert node.later[-1][:2] == ("b1", codec.FAILED)
    names = os.listdir(root)
    assert "bundle.part" not in names and "bundle.json" not in names
    assert _chunk(_Node(root), blob, 0) == (codec.REJECTED, "no bundle download in progress")
