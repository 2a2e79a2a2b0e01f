"""Running commands, one step per pass of the main loop (main thread): the command at the head
of the inbox, verified in the pass before (``firmware.gate``), runs and its ack is queued.

The node imports this module only in a pass that runs a command (``Sampler.step_main``) and
drops it after the pass, with the command's own module (``firmware.installer``,
``firmware.bundle``, ...): never in the pass that verifies. A command whose work takes
several passes (a workflow install, the end of a bundle install) returns a generator: it
becomes the node's ``job``, one step of which runs per pass, before any other command
(``Sampler.step_job``), and its return value is the ack.

A job waiting for a safe state (``firmware.safe``) lets the commands behind it run, except those
that would install or reboot: BUSY.
"""

from shared import const

# Copied from shared/wire/constants.py by python -m tools.dev.consts: edit them there.
_BUSY = const(10)  # busy with another change (e.g. an install in its health window)
_FAILED = const(9)  # ran and failed (e.g. the health window)
_IN_PROGRESS = const(2)  # accepted and running (e.g. an install's health window)
_OK = const(0)
_REJECTED = const(8)  # valid but refused (e.g. a workflow failed validation)
_UNKNOWN_KIND = const(7)
# Copied from shared/workflow/form.py by python -m tools.dev.consts: edit them there.
_EV_COMMAND = const(4)

# refused BUSY while a job waits for a safe state: the commands that install or reboot
_CHANGES = ("install_workflow", "install_bundle", "bundle_chunk", "reboot")


def run(node):
    """Run the command at the head of ``node.inbox``, verified in the pass before
    (``firmware.gate``), and queue its ack; or make it the node's job."""
    head = node.inbox[0]
    _done(node, head.pop("_n"))
    cmd_id = head["id"]
    if node.job is not None and head["kind"] in _CHANGES:  # the job waits for a safe state
        node.ack_later(cmd_id, _BUSY, "{} waits for a safe state".format(node.job_id))
        return
    node.current_cmd = cmd_id
    try:
        r = _dispatch(node, head)
        # done with it: emptied, so that a stale copy of the pointer (the collector scans the
        # stack conservatively) keeps no more than the dict alive
        head.clear()
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
        from firmware import safe

        return safe.reboot(node, cmd["id"])
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
