"""Safe installs: when the running workflow names ``safe_states`` (compiled into its state
flags, ``shared.workflow.form``), a workflow install (``firmware.installer``), an app bundle's
switch (``firmware.bundle``) and a reboot wait until it is in one of them, at most its
``safe_wait_s``. The command is acked IN_PROGRESS "waiting for a safe state" when the wait
begins, and UNSAFE if it runs out. The board keeps sampling, running its workflow and talking to
the companion meanwhile, and runs the commands behind the waiting one (``Sampler.step_job``),
except those that would install or reboot: BUSY (``firmware.commands``).

Imported by the main thread when needed and dropped again (``firmware.RARE``).
"""

from shared import const

# Copied from shared/wire/constants.py by python -m tools.dev.consts: edit them there.
_IN_PROGRESS = const(2)  # accepted and running (e.g. an install's health window)
_OK = const(0)
_UNSAFE = const(11)  # no safe state within safe_wait_s: the highest ack code
# Copied from shared/workflow/form.py by python -m tools.dev.consts: edit them there.
_F_SAFE = const(2)
_SAFE_SHIFT = const(8)  # the state flags' bits from here on hold the workflow's safe_wait_s
_SW = const(7)
_S_FLAGS = const(6)


def wait_s(wf):
    """0 if the running workflow (if any) is in a safe state, else its ``safe_wait_s``."""
    ex = wf.ex
    if ex is None:
        return 0
    st = wf.prog.states
    w = st[_S_FLAGS] >> _SAFE_SHIFT  # 0: it names no safe states
    if not w or st[ex.state * _SW + _S_FLAGS] & _F_SAFE:
        return 0
    return w


def until_safe(node, cmd_id, t0):
    """For a job to ``yield from``: wait, a pass at a time, until the running workflow is in a
    safe state, then return None (at once if it is, or names none); return the ack
    ``(UNSAFE, detail)`` once ``safe_wait_s`` has passed since uptime ``t0`` (s). Acks
    ``cmd_id`` IN_PROGRESS when it begins to wait; yields True while it waits (the node then
    runs the commands behind it)."""
    said = False
    while True:
        wf = node.wf
        w = wait_s(wf)
        if not w:
            return None
        if node.up.s - t0 >= w:
            return _UNSAFE, "no safe state within {} s (in {})".format(w, wf.ex.state_name())
        if not said:
            said = True
            node.ack_later(
                cmd_id,
                _IN_PROGRESS,
                "waiting for a safe state (in {}; up to {} s)".format(wf.ex.state_name(), w),
            )
        yield True


def reboot(node, cmd_id):
    """The reboot command: at once in a safe state, else a job that waits for one."""
    if wait_s(node.wf):
        return _reboot(node, cmd_id)
    node.reboot_requested = True
    return _OK, "rebooting"


def _reboot(node, cmd_id):
    r = yield from until_safe(node, cmd_id, node.up.s)
    if r:
        return r
    node.reboot_requested = True
    return _OK, "rebooting"
