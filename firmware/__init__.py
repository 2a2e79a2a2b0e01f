"""The board's app: every module here goes onto a board (``firmware/README.md`` says what each
holds). This package also says which of its modules, and of ``shared``'s, a board imports only
when it needs them and forgets again afterwards.

A stock ESP32 MicroPython copies every ``.mpy`` it imports into RAM, so the node imports the
code of its rare paths (commands, installs, bundles, start-up) on demand and forgets it again
(``drop(RARE)``); the next collection frees it (the names it interned stay). Only the main
thread imports and drops those, so an import never races a drop; the link thread likewise
loads and drops the encoders of its occasional reports (``drop(REPORTS)``). Kept here, in the
package every board module is part of, so that it costs no module of its own.
"""

import gc
import sys

# Imported by the main thread when needed, and dropped by it again (firmware.config and
# shared.config: by main.py once the config is checked at boot, and by the commands after a
# set_config).
RARE = (
    "firmware.config",
    "shared.config",
    "firmware.commands",
    "firmware.gate",
    "firmware.installer",
    "firmware.recover",
    "firmware.profile",
    "firmware.bundle",
    "firmware.slots",
    "firmware.start",
    "firmware.safe",
    "shared.wire.verifier",
    "shared.wire.errors",
    "shared.wire.connect",
    "shared.wire.hmac256",
    "shared.workflow.load",
    "shared.workflow.start",
    "shared.workflow.snapshot",
    "shared.filters.catalog",
    "shared.bundle",
)

# The link thread's occasional modules, dropped by that thread after each report: its reports
# (state, acks, loss), loaded per report; the overflow spool (firmware.spool), loaded when the
# node has no room; a resend command's work (firmware.resend), loaded per batch it sends;
# micropython-lib's umqtt.simple, which opens a session (UmqttLink.connect) and is not used
# again until the next one.
REPORTS = ("shared.wire.report", "firmware.spool", "firmware.resend", "umqtt.simple", "umqtt")


def drop(names):
    """Forget modules ``names`` (``RARE`` from the main thread, ``REPORTS`` from the link
    thread). A no-op on CPython, where memory is not short, and while automatic collection is
    off (the WASI test runtime): nothing would free them, and each import would only add
    garbage."""
    if sys.implementation.name == "micropython" and gc.isenabled():
        forget(names)


def forget(names):
    """Remove modules ``names`` ("pkg.mod", "pkg.sub.mod") from sys.modules and from their
    package; the next import loads them again."""
    m = sys.modules
    for name in names:
        if m.pop(name, None) is not None:
            pkg, _, attr = name.rpartition(".")
            if pkg in m and hasattr(m[pkg], attr):
                delattr(m[pkg], attr)
