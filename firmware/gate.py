"""Verifying commands, one envelope per pass of the main loop (main thread): the oldest
envelope in the inbox is checked (signature, device, time window, replays); an accepted
command then waits at the head of the inbox, as a dict, for the next pass to run it
(``firmware.commands``); a refused or repeated one is answered at once.

The node imports this module (with ``shared.wire.verifier`` and ``shared.wire.hmac256``) only
in a pass that verifies, and drops them after it. The replay table lives on flash
(``<root>/cmds.tbl``: the str the verifier holds, ``Verifier.table``), loaded per envelope and
saved whenever it changed (an accepted id, saved before the command runs, or a newer issue
time seen), so nothing of it stays in RAM between commands.
"""

import json

from firmware.files import remove, replace
from shared import const

# Copied from shared/wire/constants.py by python -m tools.dev.consts: edit them there.
_DUPLICATE = const(1)  # already done: the stored ack is sent again
_OK = const(0)


def verify(node):
    """Verify the envelope at the head of ``node.inbox``: an accepted command takes its
    place (for the next pass to run); anything else is answered and leaves the inbox."""
    head = node.inbox[0]
    node.stats["commands"] += 1
    from shared.wire.verifier import Verifier

    v = Verifier(node.key, node.device)
    _load_table(node.root, v)
    code, cmd, detail = v.check(head, node.wall.now_unix())
    if v.dirty:  # an id recorded (before it runs), or a newer issue time seen
        _save_table(node.root, v)
    if code == _OK:
        cmd["_n"] = len(head)  # its envelope's bytes, released when it has run
        node.inbox[0] = cmd
        return
    with node.lock:  # handled: its bytes leave the admission budget
        node.inbox.pop(0)
        node.inbox_bytes -= len(head)
    cmd_id = _peek_id(head) if cmd is None else cmd["id"]
    stored = stored_ack(node, cmd_id) if code == _DUPLICATE and cmd_id else None
    if stored:
        node.ack_later(cmd_id, stored[0], stored[1], False)
        return
    print("orrery: command refused:", code, detail)
    node.ack_later(cmd_id, code, detail, False)


def stored_ack(node, cmd_id):
    """``(code, detail)`` of the newest ack ``node`` remembers for command ``cmd_id``
    (``Sampler.acks``), or None."""
    t = node.acks
    i = t.rfind("\n" + cmd_id + " ")
    if i < 0:
        return None
    i += len(cmd_id) + 2
    j = t.find(" ", i)
    return int(t[i:j]), t[j + 1 : t.find("\n", j)]


def _peek_id(env):
    # the command id of an envelope that failed verification, for its ack (untrusted)
    try:
        body = json.loads(json.loads(env)["b"])
        cid = body.get("id")
        return cid if isinstance(cid, str) and 0 < len(cid) <= 64 else None
    except Exception:
        return None


def _load_table(root, verifier):
    # Restore the command replay table (saved on flash between commands and reboots): its
    # newest issue time on the first line, then the table's text, read as it is
    try:
        f = open(root + "/cmds.tbl")
    except OSError:
        _load_json(root, verifier)
        return
    try:
        with f:
            verifier.load_text(int(f.readline()), f.read())
    except Exception as e:
        print("orrery: command table not restored:", e)


def _load_json(root, verifier):
    # the table as an earlier firmware saved it (cmds.json): read once, saved as cmds.tbl
    try:
        f = open(root + "/cmds.json")
    except OSError:
        return
    try:
        with f:
            verifier.load(json.load(f))
    except Exception as e:
        print("orrery: command table not restored:", e)
        return
    _save_table(root, verifier)
    remove(root + "/cmds.json")


def _save_table(root, verifier):
    # written as the verifier holds it (write + rename): no copy of the table in RAM
    path = root + "/cmds.tbl"
    hi, text, line = verifier.table()
    with open(path + ".tmp", "w") as f:
        f.write(str(hi))
        f.write("\n")
        f.write(text)
        f.write(line)
    replace(path + ".tmp", path)
