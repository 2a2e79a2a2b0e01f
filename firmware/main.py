"""Board entry point: the deploy tool copies this file to /main.py, which MicroPython runs
after /boot.py. Everything else comes from the ``firmware`` and ``shared`` packages on the
board's filesystem; the board profile is ``/boards/<board>.json``.

Safe mode (the config or board profile is unusable, the safe-mode pin is held, or the last
boots kept failing) prints why and returns to the REPL, with no app and no watchdog, so
mpremote can reach the board. Otherwise the watchdog is armed and ``firmware.node.run`` gets
the config, the HAL and the watchdog's ``feed``. An exception from the node is logged to the
console and to /last_crash.txt, counted, and followed by a reset. Nothing here reboots
because the cloud is unreachable: staying useful offline is the node's job.
"""

import json
import sys

from firmware import RARE, drop, safemode
from firmware.clock import sleep_ms
from firmware.hal import BoardHal

WDT_TIMEOUT_MS = 60000  # the node must feed at least this often, blocking connects included
RESET_DELAY_MS = 3000  # time to read the traceback on the console before the reset
CRASH_LIMIT = 3


def _print_exception(e, f=None):
    if hasattr(sys, "print_exception"):
        sys.print_exception(e, f or sys.stdout)
    else:  # CPython
        import traceback  # type: ignore[import-not-found]  # CPython only

        traceback.print_exception(e, file=f or sys.stdout)


def _log_crash(e, path):
    _print_exception(e)
    try:
        with open(path, "w") as f:
            _print_exception(e, f)
    except OSError:
        pass


def _open_hal(cfg, machine, root):
    with open(root + "boards/" + cfg["board"] + ".json") as f:
        profile = json.load(f)
    return BoardHal(profile, machine)


def main(machine=None, run_node=None, root="/"):
    """Start the node, or stop in safe mode. Returns False in safe mode; on a board it does
    not return otherwise (it resets). ``machine``, ``run_node`` and ``root`` are for tests.
    """
    if machine is None:
        import machine
    config_path = root + "config.json"
    from firmware import config  # checks the file once; set_config imports it again

    cfg, errors = config.load(config_path)
    config.report(errors, config_path)
    del config
    drop(RARE)
    reasons = []
    hal = None
    if errors:
        reasons.append("config: {} problem(s), listed above".format(len(errors)))
    else:
        try:
            hal = _open_hal(cfg, machine, root)
        except Exception as e:  # missing or bad profile, or hardware that would not start
            reasons.append("board {}: {}".format(cfg["board"], e))
    counter = safemode.CrashCounter(root + "crash_count")
    pin_held = hal is not None and hal.safe_mode_pin_held()
    enter, why = safemode.should_enter_safe_mode(pin_held, counter, CRASH_LIMIT)
    if enter:
        reasons.append(why)
    if reasons:
        print("==== SAFE MODE: the app is not started ====")
        for r in reasons:
            print("  " + r)
        print("  after fixing, clear the count (mpremote rm :{}crash_count) and reset".format(root))
        return False

    counter.boot_started()
    wdt = machine.WDT(timeout=WDT_TIMEOUT_MS)
    feeder = safemode.Feeder(wdt, counter, cfg["health_window_s"] * 1000)
    try:
        if run_node is None:
            from firmware import node

            run_node = node.run
        run_node(cfg, hal, feeder.feed)
        print("main: node.run returned; resetting")
    except KeyboardInterrupt:
        print("main: interrupted; the watchdog stays armed and resets the board soon.")
        print("main: hold the safe-mode pin through a reset for a REPL without the app.")
        raise
    except Exception as e:
        counter.crashed()
        print(
            "main: the node crashed ({} failed boot(s) in a row); resetting".format(counter.count)
        )
        _log_crash(e, root + "last_crash.txt")
        sleep_ms(RESET_DELAY_MS)
    machine.reset()
    return True


if __name__ == "__main__":
    main()
