"""The node: one board's work, in two threads that share the flash store.

``Node`` is the sampler (``firmware.sampler``: the main thread, which never touches the
network) and the uplink (``firmware.uplink``: the link thread) over one store, one lock and
the small bounded queues between them. On CPython both run as threads (``start``/``stop``); on
a board ``run`` is the entry point. Nothing here reboots because the cloud is unreachable.

Memory: the node keeps what runs all the time; the rare paths are modules imported when needed
and forgotten again (``firmware``). See firmware/README.md, "Memory".
"""

import os
import sys

from firmware import RARE, drop
from firmware.clock import Uptime, WallClock
from firmware.files import mkdir
from firmware.sampler import Sampler
from firmware.store import Store
from firmware.uplink import FW_VERSION, Uplink

try:
    import _thread  # MicroPython's on the ESP32; CPython has the same module
except ImportError:  # a build without threads (the WASI test runtime): everything in one thread
    _thread = None  # type: ignore[assignment]


class _NoLock:
    # no *args: a varargs tuple per ``with`` would be an allocation
    def __enter__(self):
        return self

    def __exit__(self, typ, val, tb):
        return False

    def acquire(self):
        return True

    release = acquire


def _lock():
    return _thread.allocate_lock() if _thread else _NoLock()


def _spawn(fn):
    if _thread is None:
        raise RuntimeError("no threads here: call step_link() from the main loop instead")
    _thread.start_new_thread(fn, ())


class Node(Sampler, Uplink):
    """One board. ``link`` has firmware.link's interface; ``ticks_ms`` wraps at 2**30.

    ``wall_ms`` returns unix ms or None (the board's NTP result, or the simulation's clock);
    ``reset`` reboots the board; ``rand4`` returns 4 random bytes.
    """

    def __init__(self, cfg, hal, root, link, ticks_ms, wall_ms=None, reset=None, rand4=None):
        self.cfg = cfg
        self.hal = hal
        self.root = root
        self.link = link
        self.ticks = ticks_ms
        self.wall_ms = wall_ms
        self.reset = reset
        self.device = cfg["device_id"]
        self.fleet = cfg["fleet"]
        self.key = bytes.fromhex(cfg["hmac_key"])
        self.health_s = cfg.get("health_window_s", 120)
        rand4 = rand4 or (lambda: os.urandom(4))
        # the start-up parts of the protocol: what they make is kept, the module dropped
        from shared.wire import connect

        self.boot_id = connect.new_boot_id(rand4())
        topics = {}
        for k in connect.TOPIC_KINDS:
            topics[k] = connect.topic(self.fleet, self.device, k)
        will = connect.encode_will(self.boot_id)
        pull = connect.encode_pull(self.boot_id)
        del connect
        self.up = Uptime(ticks_ms)
        self.wall = WallClock()
        self.lock = _lock()
        mkdir(root)
        self.store = Store(root + "/store")
        from firmware import recover

        self.anchors = recover.load_anchors(root)
        del recover
        from firmware.slots import load_app

        # what the state reports: the app bundle that runs (else this firmware's own version)
        # and the .mpy version its MicroPython loads (None on CPython: a simulation sets it)
        self.fw = load_app(root).get("version") or FW_VERSION
        m = getattr(sys.implementation, "_mpy", 0)
        self.mpy = "{}.{}".format(m & 0xFF, m >> 8 & 3) if m else None
        drop(RARE)
        self.running = False
        self.stats = {"missed": 0, "link_drops": 0, "commands": 0}
        Uplink.__init__(self, topics, will, pull)
        Sampler.__init__(self)

    def start(self):
        """Boot the workflow and run the link in a background thread (CPython and boards)."""
        self.wf.boot()
        self.running = True
        _spawn(self._link_loop)

    def stop(self):
        """Stop the link thread; the store stays consistent."""
        self.running = False
        self.link.close()


def run(cfg, hal, feed, root="/data"):
    """Board entry point (called by main.py): run forever, feeding the watchdog."""
    import time

    from firmware import start  # the board's start-up: needed once

    node = start.build(Node, cfg, hal, root, time.ticks_ms)
    del start
    drop(RARE)
    node.start()
    while True:
        node.step_main()
        feed()
        time.sleep_ms(node.next_wait_ms())
