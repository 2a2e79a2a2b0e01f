"""The device config file on the board (``/config.json``): read and checked at boot, saved by a
``set_config`` command. What it may hold, and how a command's changes merge into it, is
``shared.config`` (the companion runs the same checks before it sends a change); ``validate``
and ``apply_update`` are re-exported here for the board's callers.
"""

import json
import os

from shared.config import apply_update, validate, with_defaults  # noqa: F401 (apply_update: re-exported)


def load(path="/config.json"):
    """Read and check the config file; return ``(cfg, errors)``. Never raises.

    ``cfg`` has the defaults filled in; it is None when the file cannot be read or does not
    hold a JSON object. The config is usable only when ``errors`` is empty.
    """
    try:
        with open(path) as f:
            cfg = json.load(f)
    except OSError:
        return None, ["config: cannot read " + path]
    except Exception:  # ValueError, UnicodeError, MemoryError: not a usable JSON text
        return None, ["config: " + path + " is not valid JSON"]
    if not isinstance(cfg, dict):
        return None, validate(cfg)
    return with_defaults(cfg), validate(cfg)


def save(path, cfg):
    """Write ``cfg`` to ``path`` atomically (a temp file renamed over it).

    Raises ValueError (listing the problems) rather than save an invalid config, which would
    stop the board at the next boot; OSError if the filesystem fails.
    """
    errors = validate(cfg)
    if errors:
        raise ValueError("invalid config: " + "; ".join(errors))
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(cfg))
        os.rename(tmp, path)
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def report(errors, path="/config.json"):
    """Print ``errors`` as a block on the serial console (nothing if there are none)."""
    if not errors:
        return
    print(
        "---- config: {} problem{} in {} ----".format(
            len(errors), "" if len(errors) == 1 else "s", path
        )
    )
    for e in errors:
        print("  " + e)
    print("---- fix it (e.g. mpremote cp config.json :{}) and reset ----".format(path))
