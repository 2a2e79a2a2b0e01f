"""The board's /main.py: pick the app slot, then start the app from it.

The deploy tool copies this file to /main.py. It imports nothing from the app, because the
app is what it chooses: ``/app_a`` or ``/app_b``, as ``/app.json`` says. A new bundle boots
once on trial (``trial``); if that boot never confirmed itself (see firmware/bundle.py), the
next boot goes back to the active slot and records the failure for the app to report.
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
        app["trial"] = None
        app["trial_booted"] = False
        save_app(root, app)
    return root + "/app_" + app.get("active", "a")


def main(root=""):
    """Boot: put the chosen slot first on sys.path and run the app's main."""
    sys.path.insert(0, select_slot(root))
    import firmware.main

    firmware.main.main()


if __name__ == "__main__":
    main()
