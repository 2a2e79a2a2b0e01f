"""The installed workflow's lifecycle: load it at boot, install a new version with migration,
roll back, cancel.

All of it is rare, so the node imports this module (with ``shared.workflow.load``, ``start``
and ``snapshot``) only when needed and drops it again (``firmware.drop``).

Files under ``<root>/wf/``: ``current.bin`` (the compiled device form that runs),
``prev.bin`` (the one before, for rollback), ``state.bin`` (the executor snapshot: state,
variables, outputs, timers), ``staged.bin`` and ``installing.json`` (an install going through
its passes: its command id and the new blob's sha256) and ``trial.json`` (an install whose
health window has not passed yet). A switch is two renames; a power cut between them is
finished at the next boot. A reboot during an install or its health window counts as a
failure: the board undoes it (back to ``prev.bin`` if it had switched) and acks it FAILED.

A version is healthy when, over its health window, it raised nothing and at most half of its
sensor reads failed (a workflow reading a channel that does not work on this board fails).
"""

import binascii
import hashlib
import json
import os
from array import array

from firmware.files import read, remove, replace, write_atomic
from shared import const
from shared.workflow.executor import Executor
from shared.workflow.program import Program

# Copied from shared/wire/constants.py by python -m tools.dev.consts: edit them there.
_BUSY = const(10)  # busy with another change (e.g. an install in its health window)
_FAILED = const(9)  # ran and failed (e.g. the health window)
_IN_PROGRESS = const(2)  # accepted and running (e.g. an install's health window)
_OK = const(0)
_REJECTED = const(8)  # valid but refused (e.g. a workflow failed validation)

_MAX_INVALID_PCT = const(50)  # a health window fails when more sensor reads failed


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


# --- boot ---------------------------------------------------------------------------------


def boot(wf):
    """``Workflows.boot``: load the installed workflow, finishing or undoing an interrupted
    install. Returns True if a workflow runs."""
    d = wf.dir + "/"
    cur = d + "current.bin"
    inst = read(d + "installing.json")
    if inst is not None and not _exists(d + "trial.json"):
        _interrupted(wf, inst)
    if not _exists(cur) and _exists(d + "staged.bin"):
        replace(d + "staged.bin", cur)  # power cut between the two renames of a switch
    trial = read(d + "trial.json")
    if trial is not None:
        try:
            cmd_id = json.loads(trial)["id"]
        except Exception:
            cmd_id = None
        rollback(wf, cmd_id, "rebooted during the health window")
    blob = read(cur)
    if blob is None:
        return False
    try:
        _activate(wf, Program(blob), read(d + "state.bin"))
    except Exception as e:
        print("orrery: installed workflow unusable:", e)
        wf.prog = wf.ex = None
        return False
    return True


def _interrupted(wf, inst):
    # A reboot in the middle of an install, before its health window: undo what it did and ack
    # it FAILED. (The command's id is in the replay table already: without this, a copy sent
    # again would get DUPLICATE "already accepted", which the companion takes for done.)
    d = wf.dir + "/"
    cur = d + "current.bin"
    try:
        j = json.loads(inst)
        cmd_id, digest = j["id"], j["sha256"]
    except Exception:
        cmd_id = digest = None
    staged = d + "staged.bin"
    if not _exists(cur) and _exists(staged):
        replace(staged, cur)  # between the two renames: finish the switch, to undo it below
        switched = True
    elif _exists(staged):
        remove(staged)  # not switched yet
        switched = False
    else:  # switched (only the trial was not recorded yet) if current.bin is the new blob
        blob = read(cur)
        switched = blob is not None and _sha(blob) == digest
    remove(d + "installing.json")
    if switched:
        rollback(wf, cmd_id, "rebooted during the install")
    elif cmd_id is not None:
        wf.node.ack_later(cmd_id, _FAILED, "rolled back: rebooted during the install")


def _sha(blob):
    return binascii.hexlify(hashlib.sha256(blob).digest()).decode()


def _check_board(hal, prog):
    chan = array("i")
    for name in prog.input_channels:
        if name not in hal.channel_names:
            raise ValueError("board has no channel '{}'".format(name))
        chan.append(hal.channel_names.index(name))
    outs = array("i")
    for name in prog.output_names:
        if name not in hal.output_names:
            raise ValueError("board has no output '{}'".format(name))
        outs.append(hal.output_names.index(name))
    return chan, outs


def _activate(wf, prog, snap, ex=None):
    # run ``prog`` (its executor ``ex`` built already, or built here) from snapshot ``snap``
    node = wf.node
    chan, outs = _check_board(node.hal, prog)
    if ex is None:
        ex = Executor(prog, node, node.ticks)
    if snap:
        try:
            ex.restore(snap)
        except ValueError as e:
            print("orrery: state not restored:", e)
    wf.prog, wf.chan, wf.out_map = prog, chan, outs
    wf.period = array("i", prog.period_ms)
    now = node.ticks()
    wf.due = array("i", [now] * len(prog.period_ms))
    wf.ex = ex
    if len(wf.snap) < ex.snapshot_size():
        wf.snap = bytearray(ex.snapshot_size())
    wf.transitions = 0
    ex.start()
    wf.dirty = True


# --- install ------------------------------------------------------------------------------


def install(wf, cmd_id, args):
    """The install_workflow command, one step a pass of the main loop: a generator that the
    node resumes once a pass (``Sampler.step_job``) and whose return value is the ack's
    ``(code, detail)``. The heap is collected between passes, so each step's garbage and the
    modules it imported are gone before the next one (``firmware.drop``):

    1. decode the blob, check its sha256, stage it on flash (``staged.bin``); wait for a
       safe state if the running workflow names any (``firmware.safe``);
    2. load it from there and check it against the board (``shared.workflow.load``);
    3. build its executor and filter chains (``shared.workflow.start``, the filter modules);
    4. (in a safe state still, or again) migrate the running state into it
       (``shared.workflow.snapshot``): the old workflow
       stops there (its state saved first, which a rollback restores from flash);
    5. switch (two renames), record the trial, start the new executor, then watch.
    """
    node = wf.node
    try:
        blob = binascii.a2b_base64(args["blob"])
        want = args["sha256"]
    except Exception:
        return _REJECTED, "install_workflow needs args blob (base64) and sha256"
    health = args.get("health_s", node.health_s)
    args = None  # the envelope's text goes with the pass
    digest = _sha(blob)
    if digest != want:
        return _REJECTED, "sha256 mismatch: blob is " + digest
    if wf.prog is not None and wf.prog.hash == digest and wf.trial is None:
        return _OK, "already installed"
    if wf.trial is not None:
        return _BUSY, "install {} is in its health window".format(wf.trial["id"])
    if type(health) is not int or not 0 <= health <= 86400:
        return _REJECTED, "health_s must be an int in [0, 86400]"
    d = wf.dir + "/"
    staged = d + "staged.bin"
    write_atomic(staged, blob)
    blob = None
    # until the trial is recorded: a reboot before it is a failed install (_interrupted)
    write_atomic(d + "installing.json", json.dumps({"id": cmd_id, "sha256": digest}))
    # the running workflow's safe_states: wait for one (the other commands run meanwhile)
    from firmware.safe import until_safe

    t0 = node.up.s
    r = yield from until_safe(node, cmd_id, t0)
    if r:
        _cancel_staged(d)
        return r
    yield

    try:
        prog = Program(read(staged))
        _check_board(node.hal, prog)
    except ValueError as e:
        _cancel_staged(d)
        return _REJECTED, str(e)
    yield

    ex = Executor(prog, node, node.ticks)
    yield

    snap = None
    r = yield from until_safe(node, cmd_id, t0)  # it may have left it since, within the wait
    if r:
        _cancel_staged(d)
        return r
    if wf.ex is not None:
        from shared.workflow.snapshot import migrate_snapshot

        if wf.dirty:
            wf.save_state()  # what a rollback restores
        try:
            snap = migrate_snapshot(wf.prog, wf.ex.snapshot(), prog)
            ex.restore(snap)
        except ValueError as e:
            _cancel_staged(d)
            return _REJECTED, "migration: " + str(e)
        wf.ex = None  # the old workflow stops where its state was migrated
        yield

    cur = d + "current.bin"
    if _exists(cur):
        replace(cur, d + "prev.bin")
        if _exists(d + "state.bin"):
            replace(d + "state.bin", d + "prev_state.bin")
    replace(staged, cur)
    if snap is not None:
        write_atomic(d + "state.bin", snap)
    else:
        remove(d + "state.bin")
    node.up.update()
    wf.trial = {
        "id": cmd_id,
        "deadline_s": node.up.s + health,
        "samples": wf.samples,
        "invalid": wf.invalid,
    }
    write_atomic(d + "trial.json", json.dumps({"id": cmd_id}))
    remove(d + "installing.json")
    try:
        _activate(wf, prog, None, ex)
    except Exception as e:
        rollback(wf, cmd_id, "did not start: {}".format(e))
        return _FAILED, "did not start: {}".format(e)
    return _IN_PROGRESS, "health window {} s".format(health)


def _cancel_staged(d):
    # an install refused before its switch: nothing of it stays
    remove(d + "staged.bin")
    remove(d + "installing.json")


def rollback(wf, cmd_id, why):
    """Go back to ``prev.bin`` (or to no workflow) and ack ``cmd_id`` FAILED with ``why``."""
    print("orrery: rolling back:", why)
    d = wf.dir + "/"
    wf.trial = None
    if _exists(d + "prev.bin"):
        replace(d + "prev.bin", d + "current.bin")
        if _exists(d + "prev_state.bin"):
            replace(d + "prev_state.bin", d + "state.bin")
        else:
            remove(d + "state.bin")
        remove(d + "trial.json")
        try:
            _activate(wf, Program(read(d + "current.bin")), read(d + "state.bin"))
        except Exception as e:
            print("orrery: previous workflow unusable:", e)
            wf.prog = wf.ex = None
    else:
        remove(d + "current.bin")
        remove(d + "state.bin")
        remove(d + "trial.json")
        wf.prog = wf.ex = None
    if cmd_id is not None:
        wf.node.ack_later(cmd_id, _FAILED, "rolled back: " + why)


def end_trial(wf):
    """``Workflows.check_health``, once the health window is over: roll back if too many
    sensor reads failed, else the install is healthy (acked OK)."""
    t = wf.trial
    samples = wf.samples - t["samples"]
    invalid = wf.invalid - t["invalid"]
    if samples and invalid * 100 > samples * _MAX_INVALID_PCT:
        rollback(wf, t["id"], "{} of {} sensor reads failed".format(invalid, samples))
        return
    wf.trial = None
    remove(wf.dir + "/trial.json")
    wf.node.ack_later(t["id"], _OK, "healthy: {} reads, {} failed".format(samples, invalid))


def cancel(wf, cmd_id):
    """The cancel command: cancel an install still in its health window (rolls back)."""
    if wf.trial is not None and (cmd_id is None or wf.trial["id"] == cmd_id):
        rollback(wf, wf.trial["id"], "canceled")
        return _OK, "canceled"
    return _REJECTED, "nothing to cancel"
