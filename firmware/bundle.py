"""App bundle updates over MQTT, into A/B slots, with a trial boot and automatic rollback.

The app lives in ``<root>/app_a`` or ``<root>/app_b``; ``<root>/app.json`` says which is
active. An update:

1. ``install_bundle`` {version, sha256, size, chunk_size, chunks} opens a download.
2. ``bundle_chunk`` {version, index, data (base64)} arrive in order (a repeat of an earlier
   chunk is acknowledged and ignored; a gap is refused, naming the chunk expected next).
3. After the last chunk the file's size and sha256 are checked, the bundle is unpacked into
   the inactive slot, ``app.json`` gets ``trial`` and the board reboots.
4. ``firmware.slots.select_slot`` boots the trial slot once. The new app must reach the
   broker and pass its health check, then ``confirm`` makes it active and acks OK. If the
   trial boot crashes or never confirms, the next boot returns to the previous slot and the
   node acks the install FAILED once it is connected again.
"""

import binascii
import hashlib
import os

from firmware.files import mkdir
from shared import const

# Copied from shared/wire/constants.py by python -m tools.dev.consts: edit them there.
_FAILED = const(9)  # ran and failed (e.g. the health window)
_IN_PROGRESS = const(2)  # accepted and running (e.g. an install's health window)
_OK = const(0)
_REJECTED = const(8)  # valid but refused (e.g. a workflow failed validation)

PART = "bundle.part"
MAX_SIZE = 1024 * 1024
_PIECE = const(512)  # bytes per read while checking and unpacking a downloaded bundle
_FILES = const(8)  # files unpacked in one pass of the main loop


def _makedirs(path):
    cur = ""
    for part in path.split("/"):
        if not part:
            cur = "/" if not cur else cur
            continue
        cur = cur + part if cur.endswith("/") or not cur else cur + "/" + part
        mkdir(cur)


def _makedirs_in(root, rel):
    # make directory ``rel`` ("a/b") and its parents under the existing directory ``root``
    i = rel.find("/")
    while True:
        mkdir(root + "/" + (rel if i < 0 else rel[:i]))
        if i < 0:
            return
        i = rel.find("/", i + 1)


def _rmtree(path):
    try:
        entries = os.listdir(path)
    except OSError:
        return
    for name in entries:
        p = path + "/" + name
        try:
            os.remove(p)
        except OSError:
            _rmtree(p)
    os.rmdir(path)


def confirm(node):
    """The running app reached the broker and is healthy: make a trial slot permanent.

    Also reports a rollback that happened at boot. Returns an ack tuple or None.
    """
    from firmware.slots import load_app, save_app

    root = node.root
    app = load_app(root)
    if app.get("trial") and app.get("trial_booted"):
        app["active"] = app["trial"]
        app["trial"] = None
        app["trial_booted"] = False
        save_app(root, app)
        node.ack_later(app.get("cmd"), _OK, "running bundle " + str(app.get("version")))
        return True
    failed = app.get("failed")
    if failed:
        app["failed"] = None
        save_app(root, app)
        node.ack_later(failed.get("id"), _FAILED, "rolled back: " + failed["why"])
        return True
    return False


def handle(node, kind, args):
    """install_bundle / bundle_chunk commands; returns (ack code, detail), or for the last
    chunk a generator that finishes the install over the next passes (its return value is
    that chunk's ack)."""
    root = node.root
    if kind == "install_bundle":
        return _start(node, args)
    st = getattr(node, "bundle", None)
    if st is None:
        return _REJECTED, "no bundle download in progress"
    if args.get("version") != st["version"]:
        return _REJECTED, "chunk is for version {!r}, downloading {!r}".format(
            args.get("version"), st["version"]
        )
    i = args.get("index")
    if type(i) is not int or i < 0 or i >= st["chunks"]:
        return _REJECTED, "index must be an int in [0, {})".format(st["chunks"])
    if i < st["next"]:
        return _OK, "chunk {} already stored".format(i)
    if i > st["next"]:
        return _REJECTED, "expected chunk {}".format(st["next"])
    try:
        data = binascii.a2b_base64(args["data"])
    except Exception:
        return _REJECTED, "data must be base64"
    with open(root + "/" + PART, "ab") as f:
        f.write(data)
    st["next"] = i + 1
    st["have"] += len(data)
    if st["next"] < st["chunks"]:
        return _OK, "chunk {} of {}".format(i + 1, st["chunks"])
    node.bundle = None
    return _finish(node, st)  # the rest takes several passes


def _start(node, args):
    v, digest, size = args.get("version"), args.get("sha256"), args.get("size")
    chunks = args.get("chunks")
    if not isinstance(v, str) or not isinstance(digest, str) or len(digest) != 64:
        return _REJECTED, "install_bundle needs version (str) and sha256 (64 hex)"
    if type(size) is not int or not 0 < size <= MAX_SIZE:
        return _REJECTED, "size must be an int in (0, {}]".format(MAX_SIZE)
    if type(chunks) is not int or not 0 < chunks <= 4096:
        return _REJECTED, "chunks must be an int in (0, 4096]"
    try:
        os.remove(node.root + "/" + PART)
    except OSError:
        pass
    node.bundle = {
        "version": v,
        "sha256": digest,
        "size": size,
        "chunks": chunks,
        "next": 0,
        "have": 0,
        "cmd": node.current_cmd,
    }
    return _IN_PROGRESS, "send {} chunks".format(chunks)


def _finish(node, st):
    # The rest of the install, one step a pass of the main loop (a generator: the node's job,
    # see firmware.commands): check the download's size and sha256, then unpack it into the
    # inactive slot _FILES files a pass, then record the trial in app.json. Its return value
    # is the last chunk's ack.
    yield  # the last chunk's pass stored it
    root = node.root
    part = root + "/" + PART
    buf = bytearray(_PIECE)  # one buffer for hashing and unpacking: nothing per read
    h = hashlib.sha256()
    size = 0
    with open(part, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(buf if n == _PIECE else memoryview(buf)[:n])
            size += n
    got = binascii.hexlify(h.digest()).decode()
    h = None
    if size != st["size"] or got != st["sha256"]:
        os.remove(part)
        node.ack_later(
            st["cmd"], _FAILED, "bundle size {} sha256 {} do not match".format(size, got)
        )
        return _FAILED, "bundle does not match its sha256"
    yield

    from firmware.slots import load_app, save_app
    from shared.bundle import entries

    app = load_app(root)
    slot = "b" if app.get("active", "a") == "a" else "a"
    target = root + "/app_" + slot
    _rmtree(target)
    _makedirs(target)
    app = None
    yield

    state = {"f": None, "d": ""}  # the file being written, the last directory made

    def write(path, piece, first):
        if first:
            if state["f"]:
                state["f"].close()
            i = path.rfind("/")
            # a bundle lists a directory's files together: each directory is made once
            # (making one that exists raises, and an exception allocates)
            if i > 0 and path[:i] != state["d"]:
                state["d"] = path[:i]
                _makedirs_in(target, state["d"])
            state["f"] = open(target + "/" + path, "wb")
        state["f"].write(piece)

    try:
        with open(part, "rb") as f:
            k = 0
            for _ in entries(f, write, _PIECE, buf):
                k += 1
                if k % _FILES == 0:
                    yield
    except ValueError as e:
        _rmtree(target)
        node.ack_later(st["cmd"], _FAILED, "bad bundle: {}".format(e))
        return _FAILED, "bad bundle"
    finally:
        if state["f"]:
            state["f"].close()
    yield

    # the reboot into the new slot waits for one of the workflow's safe_states, if it names any
    from firmware.safe import until_safe

    r = yield from until_safe(node, st["cmd"], node.up.s)
    if r:  # the new slot stays inactive
        os.remove(part)
        node.ack_later(st["cmd"], r[0], r[1])
        return r
    os.remove(part)
    app = load_app(root)
    app.update({"trial": slot, "trial_booted": False, "version": st["version"], "cmd": st["cmd"]})
    save_app(root, app)
    node.reboot_requested = True
    return _OK, "bundle {} stored in slot {}; rebooting into it".format(st["version"], slot)
