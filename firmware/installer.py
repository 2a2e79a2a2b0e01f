"""The installed workflow: load at boot, install with migration, health window, rollback.

Files under ``<root>/wf/``: ``current.bin`` (the compiled device form that runs),
``prev.bin`` (the one before, for rollback), ``state.bin`` (the executor snapshot: state,
variables, outputs, timers) and ``trial.json`` (an install whose health window has not passed
yet). A switch is two renames; a power cut between them is finished at the next boot. A
reboot during a health window counts as a failure: the board rolls back to ``prev.bin``.

A version is healthy when, over its health window, it raised nothing and at most half of its
sensor reads failed (a workflow reading a channel that does not work on this board fails).
"""

import binascii
import hashlib
import json
import os
from array import array

from shared import protocol as P
from shared.executor import EV_COMMAND, EV_LINK_DOWN, EV_LINK_UP, Executor, migrate_snapshot
from shared.program import Program

MAX_INVALID_PCT = 50


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _write_atomic(path, data):
    if isinstance(data, str):
        data = data.encode()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    _replace(tmp, path)


def _replace(src, dst):
    try:
        os.rename(src, dst)
    except OSError:  # FAT will not rename over a file
        _remove(dst)
        os.rename(src, dst)


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


class Workflows:
    """The node's running workflow and its lifecycle; all methods run in the main thread."""

    def __init__(self, root, node):
        self.dir = root + "/wf"
        try:
            os.mkdir(self.dir)
        except OSError:
            pass
        self.node = node
        self.prog = None
        self.ex = None
        self.chan = array("i")
        self.out_map = array("i")
        self.due = array("i")
        self.period = array("i")
        self.snap = bytearray(0)  # sized to the running program's snapshot on activation
        self.dirty = False
        self.trial = None  # {"id", "deadline_s", "samples", "invalid"} during a health window
        self.samples = 0
        self.invalid = 0
        self.link_ev = 0
        self.transitions = 0

    def _path(self, name):
        return self.dir + "/" + name

    # --- boot ---------------------------------------------------------------------------

    def boot(self):
        """Load the installed workflow, finishing or undoing an interrupted install."""
        cur, staged = self._path("current.bin"), self._path("staged.bin")
        if not _exists(cur) and _exists(staged):
            _replace(staged, cur)  # power cut between the two renames of a switch
        trial = _read(self._path("trial.json"))
        if trial is not None:
            try:
                cmd_id = json.loads(trial)["id"]
            except Exception:
                cmd_id = None
            self._rollback(cmd_id, "rebooted during the health window")
        blob = _read(cur)
        if blob is None:
            return False
        try:
            prog = Program(blob)
            self._activate(prog, _read(self._path("state.bin")))
        except Exception as e:
            print("orrery: installed workflow unusable:", e)
            self.prog = self.ex = None
            return False
        return True

    def _check_board(self, prog):
        hal = self.node.hal
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

    def _activate(self, prog, snap):
        chan, outs = self._check_board(prog)
        ex = Executor(prog, self.node, self.node.ticks)
        if snap:
            try:
                ex.restore(snap)
            except ValueError as e:
                print("orrery: state not restored:", e)
        self.prog, self.chan, self.out_map = prog, chan, outs
        self.period = array("i", prog.period_ms)
        now = self.node.ticks()
        self.due = array("i", [now] * len(prog.period_ms))
        self.ex = ex
        if len(self.snap) < ex.snapshot_size():
            self.snap = bytearray(ex.snapshot_size())
        self.transitions = 0
        ex.start()
        self.dirty = True

    # --- install --------------------------------------------------------------------------

    def install(self, cmd_id, args):
        """The install_workflow command: verify, validate, stage, switch, migrate, then watch."""
        try:
            blob = binascii.a2b_base64(args["blob"])
            want = args["sha256"]
        except Exception:
            return P.REJECTED, "install_workflow needs args blob (base64) and sha256"
        digest = binascii.hexlify(hashlib.sha256(blob).digest()).decode()
        if digest != want:
            return P.REJECTED, "sha256 mismatch: blob is " + digest
        if self.prog is not None and self.prog.hash == digest and self.trial is None:
            return P.OK, "already installed"
        if self.trial is not None:
            return P.BUSY, "install {} is in its health window".format(self.trial["id"])
        try:
            prog = Program(blob)
            self._check_board(prog)
        except ValueError as e:
            return P.REJECTED, str(e)
        snap = None
        if self.ex is not None:
            try:
                snap = migrate_snapshot(self.prog, self.ex.snapshot(), prog)
            except ValueError as e:
                return P.REJECTED, "migration: " + str(e)
        health = args.get("health_s", self.node.health_s)
        if type(health) is not int or not 0 <= health <= 86400:
            return P.REJECTED, "health_s must be an int in [0, 86400]"
        _write_atomic(self._path("staged.bin"), blob)
        cur = self._path("current.bin")
        if _exists(cur):
            _replace(cur, self._path("prev.bin"))
            _replace(self._path("state.bin"), self._path("prev_state.bin")) if _exists(
                self._path("state.bin")
            ) else None
        _replace(self._path("staged.bin"), cur)
        if snap is not None:
            _write_atomic(self._path("state.bin"), snap)
        else:
            _remove(self._path("state.bin"))
        self.node.up.update()
        self.trial = {
            "id": cmd_id,
            "deadline_s": self.node.up.s + health,
            "samples": self.samples,
            "invalid": self.invalid,
        }
        _write_atomic(self._path("trial.json"), json.dumps({"id": cmd_id}))
        try:
            self._activate(prog, snap)
        except Exception as e:
            self._rollback(cmd_id, "did not start: {}".format(e))
            return P.FAILED, "did not start: {}".format(e)
        return P.IN_PROGRESS, "health window {} s".format(health)

    def check_health(self):
        """Main loop hook: deliver link events, notice transitions, end health windows."""
        ex = self.ex
        if ex is not None:
            if self.link_ev:
                ex.step(EV_LINK_UP if self.link_ev == 1 else EV_LINK_DOWN, 0)
                self.link_ev = 0
            if ex.transitions != self.transitions:
                self.transitions = ex.transitions
                self.dirty = True
        t = self.trial
        if t is None or self.node.up.s < t["deadline_s"]:
            return
        samples = self.samples - t["samples"]
        invalid = self.invalid - t["invalid"]
        if samples and invalid * 100 > samples * MAX_INVALID_PCT:
            self._rollback(t["id"], "{} of {} sensor reads failed".format(invalid, samples))
            return
        self.trial = None
        _remove(self._path("trial.json"))
        self.node.ack_later(t["id"], P.OK, "healthy: {} reads, {} failed".format(samples, invalid))

    def fault(self, why):
        """An exception from the executor: roll back a trial, else keep running and log."""
        print("orrery: workflow fault:", why)
        if self.trial is not None:
            self._rollback(self.trial["id"], why)

    def _rollback(self, cmd_id, why):
        print("orrery: rolling back:", why)
        prev = self._path("prev.bin")
        self.trial = None
        if _exists(prev):
            _replace(prev, self._path("current.bin"))
            if _exists(self._path("prev_state.bin")):
                _replace(self._path("prev_state.bin"), self._path("state.bin"))
            else:
                _remove(self._path("state.bin"))
            _remove(self._path("trial.json"))
            blob = _read(self._path("current.bin"))
            try:
                self._activate(Program(blob), _read(self._path("state.bin")))
            except Exception as e:
                print("orrery: previous workflow unusable:", e)
                self.prog = self.ex = None
        else:
            _remove(self._path("current.bin"))
            _remove(self._path("state.bin"))
            _remove(self._path("trial.json"))
            self.prog = self.ex = None
        if cmd_id is not None:
            self.node.ack_later(cmd_id, P.FAILED, "rolled back: " + why)

    def cancel(self, cmd_id):
        """Cancel an install still in its health window (rolls back)."""
        if self.trial is not None and (cmd_id is None or self.trial["id"] == cmd_id):
            self._rollback(self.trial["id"], "canceled")
            return P.OK, "canceled"
        return P.REJECTED, "nothing to cancel"

    def command(self, name):
        """The run_command command: deliver a named workflow command event."""
        if self.ex is None:
            return P.REJECTED, "no workflow installed"
        i = self.ex.command_index(name) if isinstance(name, str) else -1
        if i < 0:
            return P.REJECTED, "workflow has no command {!r}".format(name)
        fired = self.ex.step(EV_COMMAND, i)
        return P.OK, "state {}{}".format(self.ex.state_name(), "" if fired else " (no transition)")

    def link_event(self, up):
        """Link thread hook: remember a link change for the main thread to deliver."""
        self.link_ev = 1 if up else 2

    def save_state(self):
        """Persist the executor snapshot (write + rename, only after a change)."""
        self.dirty = False
        if self.ex is None:
            return
        n = self.ex.snapshot_into(self.snap)
        _write_atomic(self._path("state.bin"), memoryview(self.snap)[:n])


# --- small persisted tables -------------------------------------------------------------


def load_anchors(root):
    """Time anchors of recent boots: {boot_id: (up_s, up_ms, unix_s, unix_ms)}."""
    try:
        raw = json.loads(_read(root + "/anchors.json"))
        return {int(k): tuple(v) for k, v in raw.items()}
    except Exception:
        return {}


def save_anchor(node, boot_id, anchor):
    """Remember this boot's anchor so a later boot can send its backlog with correct times."""
    node.anchors[boot_id] = anchor
    while len(node.anchors) > 8:
        del node.anchors[min(node.anchors)]
    data = {}
    for k in node.anchors:
        data[str(k)] = list(node.anchors[k])
    _write_atomic(node.root + "/anchors.json", json.dumps(data))


def load_verifier(root, verifier):
    """Restore the command replay table after a reboot."""
    raw = _read(root + "/cmds.json")
    if raw:
        try:
            verifier.load(json.loads(raw))
        except Exception as e:
            print("orrery: command table not restored:", e)


def save_verifier(root, verifier):
    """Persist the command replay table."""
    _write_atomic(root + "/cmds.json", json.dumps(verifier.state()))


def set_config(node, args):
    """The set_config command: validate the merged config and save it; it applies at boot."""
    from firmware import config

    changes = args.get("changes")
    if not isinstance(changes, dict):
        return P.REJECTED, "set_config needs args.changes (an object)"
    new, errors = config.apply_update(node.cfg, changes)
    if errors:
        return P.REJECTED, "; ".join(errors)
    path = node.cfg_path if getattr(node, "cfg_path", None) else node.root + "/config.json"
    config.save(path, new)
    node.cfg = new
    return P.OK, "saved; applies at the next boot"
