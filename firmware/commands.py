"""Command handling, one step per pass of the main loop: verify the oldest envelope in the
inbox, or run the command verified in the pass before, and queue its ack (main thread).

The node imports this module only when commands are waiting (``Node.step_main``) and drops it
after each pass, with what the step imported: verifying needs ``shared.wire.verifier`` and
``shared.wire.hmac256``, running needs the command's own module (``firmware.installer``,
``firmware.bundle``, ...), never both in one pass. A verified command stays at the head of
``node.inbox`` (a dict in place of its envelope) until the next pass runs it. A command whose
work takes several passes (a workflow install, the end of a bundle install) returns a
generator: it becomes the node's ``job``, one step of which runs per pass, before any other
command (``Sampler.step_job``), and its return value is the ack. The replay table
lives on flash (``<root>/cmds.tbl``, as one str: ``Verifier.table``), loaded per envelope and saved whenever it changed (an
accepted id, saved before the command runs, or a newer issue time seen), so nothing of it
stays in RAM between commands.
"""

import json

from firmware.files import remove, replace
from shared import const

# Copied from shared/wire/constants.py by python -m tools.dev.consts: edit them there.
_DUPLICATE = const(1)  # already done: the stored ack is sent again
_FAILED = const(9)  # ran and failed (e.g. the health window)
_IN_PROGRESS = const(2)  # accepted and running (e.g. an install's health window)
_OK = const(0)
_REJECTED = const(8)  # valid but refused (e.g. a workflow failed validation)
_UNKNOWN_KIND = const(7)
# Copied from shared/workflow/form.py by python -m tools.dev.consts: edit them there.
_EV_COMMAND = const(4)


def run(node):
    """One step for the head of ``node.inbox``: verify an envelope (an accepted command waits
    there for the next pass), or run the command verified before and queue its ack."""
    head = node.inbox[0]
    if isinstance(head, dict):
        _done(node, head.pop("_n"))
        cmd_id = head["id"]
        node.current_cmd = cmd_id
        try:
            r = _dispatch(node, head)
            head = None
            if not isinstance(r, tuple):  # it runs over several passes, from this one on
                node.job = r
                node.job_id = cmd_id
                node.step_job()
                return
            code, detail = r
        except Exception as e:  # a command must never take the node down
            code, detail = _FAILED, "{}: {}".format(type(e).__name__, e)
        node.ack_later(cmd_id, code, detail)
        return
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
    _done(node, len(head))
    cmd_id = _peek_id(head) if cmd is None else cmd["id"]
    stored = node.stored_ack(cmd_id) if code == _DUPLICATE and cmd_id else None
    if stored:
        node.ack_later(cmd_id, stored[0], stored[1], False)
        return
    print("orrery: command refused:", code, detail)
    node.ack_later(cmd_id, code, detail, False)


def _done(node, n):
    # the head of the inbox is handled: its bytes leave the admission budget
    with node.lock:
        node.inbox.pop(0)
        node.inbox_bytes -= n


def _dispatch(node, cmd):
    kind = cmd["kind"]
    args = cmd["args"] if isinstance(cmd["args"], dict) else {}
    if kind == "install_workflow":
        from firmware import installer

        return installer.install(node.wf, cmd["id"], args)
    if kind == "run_command":
        return _command(node.wf, args.get("name"))
    if kind == "set_config":
        return _set_config(node, args)
    if kind == "resend":
        first, last = args.get("first"), args.get("last")
        if type(first) is not int or type(last) is not int or not 1 <= first <= last:
            return _REJECTED, "resend needs ints 1 <= first <= last"
        node.resends.append((first, last, cmd["id"]))
        return _IN_PROGRESS, "queued"
    if kind == "reboot":
        node.reboot_requested = True
        return _OK, "rebooting"
    if kind == "cancel":
        from firmware import installer

        return installer.cancel(node.wf, args.get("id"))
    if kind in ("install_bundle", "bundle_chunk"):
        from firmware import bundle

        return bundle.handle(node, kind, args)
    return _UNKNOWN_KIND, kind


def _command(wf, name):
    # run_command: deliver a named workflow command event
    ex = wf.ex
    if ex is None:
        return _REJECTED, "no workflow installed"
    i = ex.command_index(name) if isinstance(name, str) else -1
    if i < 0:
        return _REJECTED, "workflow has no command {!r}".format(name)
    fired = ex.step(_EV_COMMAND, i)
    return _OK, "state {}{}".format(ex.state_name(), "" if fired else " (no transition)")


def _set_config(node, args):
    # validate the merged config and save it; it applies at the next boot
    from firmware import config

    changes = args.get("changes")
    if not isinstance(changes, dict):
        return _REJECTED, "set_config needs args.changes (an object)"
    new, errors = config.apply_update(node.cfg, changes)
    if errors:
        return _REJECTED, "; ".join(errors)
    path = node.cfg_path if getattr(node, "cfg_path", None) else node.root + "/config.json"
    config.save(path, new)
    node.cfg = new
    return _OK, "saved; applies at the next boot"


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
    hi, text = verifier.table()
    with open(path + ".tmp", "w") as f:
        f.write(str(hi))
        f.write("\n")
        f.write(text)
    replace(path + ".tmp", path)
