"""App bundle updates over MQTT, into A/B slots, with a trial boot and automatic rollback.

The app lives in ``<root>/app_a`` or ``<root>/app_b``; ``<root>/app.json`` says which is
active. The protocol (the companion's side is a bundle rollout):

1. ``install_bundle`` {version, sha256, size, chunk_size, chunks} opens a download, or resumes
   the one on flash: the download's state is ``<root>/bundle.json`` (version, sha256, size,
   chunk_size, chunks and the install's command id, written atomically) next to its bytes,
   ``<root>/bundle.part``. When that is a download of the same version and sha256, the board
   keeps its first K = min(part size // chunk_size, chunks - 1) whole chunks and cuts the file
   to K * chunk_size bytes (a chunk cut short by a power cut goes; the last chunk is always
   fetched again, since it is the one that completes the download); otherwise it starts
   afresh. The ack is IN_PROGRESS ``next K/N`` (the index of the chunk expected next, of N):
   ``next 0/42``, or ``next 17/42 (resumed)``. This holds after a reboot or a power cut, and
   for a repeated ``install_bundle`` (a new command id, which then gets the final result)
   while a download runs.
2. ``bundle_chunk`` {version, index, data (base64)}: an index below the next is acked OK
   ``chunk i already stored``; the next one is appended and acked OK ``next K+1/N``; one
   beyond it is REJECTED ``next K/N`` (the sender resends from K). A chunk must be chunk_size
   bytes (the last one: the rest). A chunk for another version, or with no download, is
   REJECTED saying so; after a reboot the first chunk restores the download from flash.
3. After the last chunk the file's size and sha256 are checked, the bundle is unpacked into
   the inactive slot, ``app.json`` gets ``trial`` and the board reboots (one step a pass of
   the main loop: the node's job; the last chunk's ack is OK ``bundle V stored in slot S;
   rebooting into it``).
4. ``firmware.slots.select_slot`` boots the trial slot once. The new app must reach the
   broker and stay up (``confirm``): it becomes active and the ``install_bundle`` command gets
   a second ack, OK ``running bundle V``. If the trial boot crashes or never confirms, the
   next boot returns to the previous slot and the node acks that command FAILED
   ``rolled back: <why>`` once it is connected again.

``app.json``'s ``version`` is the version of the bundle that runs (``prev_version`` the one
before a trial), which the board's state message reports as ``fw``.
"""

import binascii
import hashlib
import json
import os

from firmware.files import mkdir, read, remove, replace, write_atomic
from shared import const

# Copied from shared/wire/constants.py by python -m tools.dev.consts: edit them there.
_FAILED = const(9)  # ran and failed (e.g. the health window)
_IN_PROGRESS = const(2)  # accepted and running (e.g. an install's health window)
_OK = const(0)
_REJECTED = const(8)  # valid but refused (e.g. a workflow failed validation)

PART = "bundle.part"
STATE = "bundle.json"  # the download's state, next to its bytes
MAX_SIZE = 1024 * 1024
_PIECE = const(512)  # bytes per read while checking and unpacking a downloaded bundle
_FILES = const(8)  # files unpacked in one pass of the main loop
_COPY = const(32)  # pieces copied in one pass while cutting a download back to whole chunks


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
    """install_bundle / bundle_chunk commands; returns (ack code, detail), or a generator
    that finishes the command over the next passes (its return value is the ack): the end of
    an install after the last chunk, or cutting a resumed download back to whole chunks."""
    if kind == "install_bundle":
        return _start(node, args)
    st = node.bundle
    if st is None:  # after a reboot: the download on flash, if any
        st = _load(node.root)
        if st is None:
            return _REJECTED, "no bundle download in progress"
        node.bundle = st
    if st["cut"]:
        return _cut_then(node, st, _chunk, args)
    return _chunk(node, st, args)


def _next(st):
    return "next {}/{}".format(st["next"], st["chunks"])


def _chunk(node, st, args):
    if args.get("version") != st["version"]:
        return _REJECTED, "chunk is for version {!r}, downloading {!r}".format(
            args.get("version"), st["version"]
        )
    i = args.get("index")
    n = st["chunks"]
    if type(i) is not int or i < 0 or i >= n:
        return _REJECTED, "index must be an int in [0, {})".format(n)
    if i < st["next"]:
        return _OK, "chunk {} already stored".format(i)
    if i > st["next"]:
        return _REJECTED, _next(st)
    try:
        data = binascii.a2b_base64(args["data"])
    except Exception:
        return _REJECTED, "data must be base64"
    cs = st["chunk_size"]
    want = cs if i < n - 1 else st["size"] - cs * (n - 1)
    if len(data) != want:
        return _REJECTED, "chunk {} must be {} bytes, not {}".format(i, want, len(data))
    with open(node.root + "/" + PART, "ab") as f:
        f.write(data)
    st["next"] = i + 1
    if i + 1 < n:
        return _OK, _next(st)
    node.bundle = None
    return _finish(node, st)  # the rest takes several passes


def _load(root):
    # the download on flash (bundle.json), with "held": the bytes of bundle.part; or None
    try:
        st = json.loads(read(root + "/" + STATE))
        st["held"] = os.stat(root + "/" + PART)[6]
    except Exception:  # none, or unreadable: no download to resume
        return None
    return _count(st)


def _count(st):
    # "next": the whole chunks held (the last one never counts: it completes the download),
    # "cut": bundle.part holds more than those and must be cut back to them
    cs = st["chunk_size"]
    k = min(st["held"] // cs, st["chunks"] - 1)
    st["next"] = k
    st["cut"] = st["held"] != k * cs
    return st


def _cut_then(node, st, then, args):
    # cut bundle.part back to its first st["next"] chunks, a few pieces a pass (MicroPython's
    # files cannot be truncated: the whole chunks are copied to a new file, which replaces
    # it), then return then(node, st, args)
    yield
    part = node.root + "/" + PART
    left = st["next"] * st["chunk_size"]
    buf = bytearray(_PIECE)
    k = 0
    with open(part, "rb") as src, open(part + ".tmp", "wb") as dst:
        while left:
            n = src.readinto(buf)
            if not n:  # shorter than counted: nothing more to keep
                break
            if n > left:
                n = left
            dst.write(buf if n == _PIECE else memoryview(buf)[:n])
            left -= n
            k += 1
            if k % _COPY == 0:
                yield
    replace(part + ".tmp", part)
    st["held"] = st["next"] * st["chunk_size"]
    st["cut"] = False
    r = then(node, st, args)
    if not isinstance(r, tuple):
        r = yield from r
    return r


def _resumed(node, st, args):
    return _IN_PROGRESS, _next(st) + " (resumed)"


def _start(node, args):
    v, digest, size = args.get("version"), args.get("sha256"), args.get("size")
    cs, chunks = args.get("chunk_size"), args.get("chunks")
    if not isinstance(v, str) or not 0 < len(v) <= 64 or min(v) < " ":
        # what the state message's fw may hold, which reports it once it runs
        return _REJECTED, "version must be 1..64 printable chars"
    if not isinstance(digest, str) or len(digest) != 64:
        return _REJECTED, "sha256 must be 64 hex digits"
    if type(size) is not int or not 0 < size <= MAX_SIZE:
        return _REJECTED, "size must be an int in (0, {}]".format(MAX_SIZE)
    if type(cs) is not int or cs <= 0:
        return _REJECTED, "chunk_size must be a positive int"
    if type(chunks) is not int or not 0 < chunks <= 4096 or chunks != (size + cs - 1) // cs:
        return _REJECTED, "chunks must be size / chunk_size rounded up, at most 4096"
    root = node.root
    st = _load(root)
    resumed = st is not None and st["version"] == v and st["sha256"] == digest
    if not resumed:
        remove(root + "/" + PART)  # the old download's bytes first: never under a new state
        with open(root + "/" + PART, "wb"):
            pass
        st = {"version": v, "sha256": digest, "held": 0}
    st["size"] = size
    st["chunk_size"] = cs  # the bytes held are this bundle's whatever the chunk size was
    st["chunks"] = chunks
    st["cmd"] = node.current_cmd  # the newest install_bundle gets the final result
    _count(st)
    write_atomic(
        root + "/" + STATE,
        json.dumps(
            {
                "version": v,
                "sha256": digest,
                "size": size,
                "chunk_size": cs,
                "chunks": chunks,
                "cmd": st["cmd"],
            }
        ),
    )
    node.bundle = st
    if not resumed:
        return _IN_PROGRESS, _next(st)
    if st["cut"]:
        return _cut_then(node, st, _resumed, None)
    return _resumed(node, st, None)


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
        _discard(root)
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
        _discard(root)
        node.ack_later(st["cmd"], _FAILED, "bad bundle: {}".format(e))
        return _FAILED, "bad bundle"
    finally:
        if state["f"]:
            state["f"].close()
    yield

    # the reboot into the new slot waits for one of the workflow's safe_states, if it names any
    from firmware.safe import until_safe

    r = yield from until_safe(node, st["cmd"], node.up.s)
    _discard(root)
    if r:  # the new slot stays inactive
        node.ack_later(st["cmd"], r[0], r[1])
        return r
    app = load_app(root)
    # "version" is what runs once the board reboots; a trial that fails puts "prev_version" back
    app["prev_version"] = app.get("version")
    app.update({"trial": slot, "trial_booted": False, "version": st["version"], "cmd": st["cmd"]})
    save_app(root, app)
    node.reboot_requested = True
    return _OK, "bundle {} stored in slot {}; rebooting into it".format(st["version"], slot)


def _discard(root):
    # the download is over: its bytes, then its state
    remove(root + "/" + PART)
    remove(root + "/" + STATE)
