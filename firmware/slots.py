"""The A/B app slots: the slot table (``/app.json``) and the choice of the slot at boot.

The app lives in ``/app_a`` or ``/app_b``; the table says which is active, which one boots
on trial after an update, and a trial that failed. The deploy tool copies this file to
``/boot.py`` too, which MicroPython runs first: there it puts the chosen slot first on
``sys.path``, and ``/main.py`` (``firmware/entry.py``) starts the app from it. So this module
imports nothing of the app: it runs before any slot is on the path. A new bundle boots once on
trial; if that boot never confirmed itself (``firmware/bundle.py``), the next boot goes back to
the active slot and records the failure for the app to report.
"""

import json
import os
import sys

APP = "app.json"


def load_app(root):
    """The slot table, or the default (slot a active) when there is none or it is unreadable."""
    try:
        with open(root + "/" + APP) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"active": "a"}


def save_app(root, app):
    """Write the slot table atomically (temp file + rename)."""
    tmp = root + "/" + APP + ".tmp"
    with open(tmp, "w") as f:
        json.dump(app, f)
    try:
        os.rename(tmp, root + "/" + APP)
    except OSError:  # FAT will not rename over a file
        os.remove(root + "/" + APP)
        os.rename(tmp, root + "/" + APP)


def select_slot(root):
    """The slot directory to import the app from at this boot.

    A pending trial boots once; a trial still unconfirmed at the next boot is abandoned
    (recorded as failed, for the app to report) and the previous slot boots.
    """
    app = load_app(root)
    trial = app.get("trial")
    if trial:
        if not app.get("trial_booted"):
            app["trial_booted"] = True
            save_app(root, app)
            return root + "/app_" + trial
        app["failed"] = {
            "id": app.get("cmd"),
            "version": app.get("version"),
            "why": "trial boot did not reach the broker and pass its health check",
        }
        app["version"] = app.get("prev_version")
        app["trial"] = None
        app["trial_booted"] = False
        save_app(root, app)
    return root + "/app_" + app.get("active", "a")


def boot(root=""):
    """What ``/boot.py`` does: put the slot to boot from first on ``sys.path``."""
    sys.path.insert(0, select_slot(root))


if __name__ == "__main__":  # /boot.py
    boot()
