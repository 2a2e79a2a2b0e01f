"""The device config's checks: what a board's ``/config.json`` may hold, and how a ``set_config``
command's changes merge into it. Pure, so the board (``firmware.config``: reading and saving the
file) and the companion (``orrery devices send … config``: refusing a typo before it is sent)
run the same checks.

Keys (``*`` required)::

    device_id*   id: 1..64 chars of [A-Za-z0-9_.-]; never changed by set_config
    fleet*       id
    broker*      {"host"*: str, "port"*: 1..65535, "tls"*: bool, "ca": path of a CA file (tls only)}
    username     str;  password: str
    hmac_key*    hex, an even number of digits, 32..128 (16..64 bytes)
    board*       board profile name (id)
    wifi         {"ssid"*: str 1..32, "password": str 0..64}
    ntp_host     str (default "pool.ntp.org")
    health_window_s  10..86400 (default 120): how long the app must run before the boot counts
                 as healthy and the crash counter resets
    log_level    "debug" | "info" | "warning" | "error" (default "info")

Errors are ``"key: reason"`` strings (nested keys as ``broker.port``). They never quote a
string value, so no secret ends up on the console or in an ack.
"""

DEFAULTS = {"ntp_host": "pool.ntp.org", "health_window_s": 120, "log_level": "info"}
LOG_LEVELS = ("debug", "info", "warning", "error")

_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
_HEX = "0123456789abcdefABCDEF"
_TOP = (
    "device_id",
    "fleet",
    "broker",
    "username",
    "password",
    "hmac_key",
    "board",
    "wifi",
    "ntp_host",
    "health_window_s",
    "log_level",
)
_TOP_REQUIRED = ("device_id", "fleet", "broker", "hmac_key", "board")
_BROKER = ("host", "port", "tls", "ca")
_BROKER_REQUIRED = ("host", "port", "tls")
_WIFI = ("ssid", "password")
_WIFI_REQUIRED = ("ssid",)
_SECTIONS = (("broker", _BROKER_REQUIRED), ("wifi", _WIFI_REQUIRED))


def _tname(v):
    return type(v).__name__


def _is_int(v):
    # bool is not an int here (and on MicroPython isinstance(True, int) is False anyway)
    return isinstance(v, int) and not isinstance(v, bool)


def _keys(errors, prefix, d, known, required):
    for k in required:
        if k not in d:
            errors.append(prefix + k + ": required")
    for k in sorted(str(k) for k in d):
        if k not in known:
            errors.append(prefix + k + ": unknown key")


def _str(errors, d, key, name, lo, hi):
    if key not in d:
        return False
    v = d[key]
    if not isinstance(v, str):
        errors.append("{}: must be a string, got {}".format(name, _tname(v)))
        return False
    if not lo <= len(v) <= hi:
        errors.append("{}: must be {}..{} chars".format(name, lo, hi))
        return False
    return True


def _id(errors, d, key):
    if key not in d:
        return
    v = d[key]
    if not isinstance(v, str):
        errors.append("{}: must be a string, got {}".format(key, _tname(v)))
        return
    ok = 1 <= len(v) <= 64
    for c in v:
        if c not in _ID_CHARS:
            ok = False
    if not ok:
        errors.append(key + ": must be 1..64 chars of [A-Za-z0-9_.-]")


def _int(errors, d, key, name, lo, hi):
    if key not in d:
        return
    v = d[key]
    if not _is_int(v):
        errors.append("{}: must be an int, got {}".format(name, _tname(v)))
    elif not lo <= v <= hi:
        errors.append("{}: must be {}..{}, got {}".format(name, lo, hi, v))


def _obj(errors, d, key):
    v = d.get(key)
    if key in d and not isinstance(v, dict):
        errors.append("{}: must be an object, got {}".format(key, _tname(v)))
        return None
    return v


def validate(cfg):
    """Return the list of problems with ``cfg`` as ``"key: reason"`` strings; [] if it is valid."""
    if not isinstance(cfg, dict):
        return ["config: must be an object, got " + _tname(cfg)]
    errors = []
    _keys(errors, "", cfg, _TOP, _TOP_REQUIRED)
    _check(errors, cfg, True)
    return errors


def check_changes(changes):
    """Return the problems a ``set_config`` command's ``changes`` show by themselves, before
    they meet a board's config (the companion's check; ``apply_update`` then checks the merged
    config on the board): unknown keys, required keys removed (a None value), ``device_id``,
    and each value given against its key's rule. ``broker`` and ``wifi`` merge key by key, so
    their required keys are not required here, and ``broker.ca`` is checked against
    ``broker.tls`` only when both are given."""
    if not isinstance(changes, dict):
        return ["changes: must be an object, got " + _tname(changes)]
    errors = []
    if "device_id" in changes:
        errors.append("device_id: cannot be changed")
    given = {}
    for k in sorted(str(k) for k in changes):
        v = changes[k]
        if k == "device_id":
            continue
        if k not in _TOP:
            errors.append(k + ": unknown key")
        elif v is None:
            if k in _TOP_REQUIRED:
                errors.append(k + ": required")
        else:
            given[k] = v
    for k, required in _SECTIONS:
        section = given.get(k)
        if isinstance(section, dict):
            part = {}
            for sk in sorted(str(sk) for sk in section):
                if section[sk] is not None:
                    part[sk] = section[sk]
                elif sk in required:
                    errors.append(k + "." + sk + ": required")
            given[k] = part
    _check(errors, given, False)
    return errors


def _check(errors, cfg, whole):
    # every key's rule, for the keys ``cfg`` has; ``whole`` False: sections are partial
    _id(errors, cfg, "device_id")
    _id(errors, cfg, "fleet")
    _id(errors, cfg, "board")
    broker = _obj(errors, cfg, "broker")
    if broker is not None:
        _keys(errors, "broker.", broker, _BROKER, _BROKER_REQUIRED if whole else ())
        _str(errors, broker, "host", "broker.host", 1, 253)
        _int(errors, broker, "port", "broker.port", 1, 65535)
        tls = broker.get("tls")
        if "tls" in broker and not isinstance(tls, bool):
            errors.append("broker.tls: must be a bool, got " + _tname(tls))
        if (
            _str(errors, broker, "ca", "broker.ca", 1, 128)
            and tls is not True
            and (whole or "tls" in broker)
        ):
            errors.append("broker.ca: only used with tls")
    _str(errors, cfg, "username", "username", 1, 64)
    _str(errors, cfg, "password", "password", 0, 128)
    key = cfg.get("hmac_key")
    if not isinstance(key, str):
        if "hmac_key" in cfg:
            errors.append("hmac_key: must be a string, got " + _tname(key))
    else:
        ok = 32 <= len(key) <= 128 and len(key) % 2 == 0
        for c in key:
            if c not in _HEX:
                ok = False
        if not ok:
            errors.append("hmac_key: must be an even number of hex digits, 32..128")
    wifi = _obj(errors, cfg, "wifi")
    if wifi is not None:
        _keys(errors, "wifi.", wifi, _WIFI, _WIFI_REQUIRED if whole else ())
        _str(errors, wifi, "ssid", "wifi.ssid", 1, 32)
        _str(errors, wifi, "password", "wifi.password", 0, 64)
    _str(errors, cfg, "ntp_host", "ntp_host", 1, 253)
    _int(errors, cfg, "health_window_s", "health_window_s", 10, 86400)
    if "log_level" in cfg and cfg["log_level"] not in LOG_LEVELS:
        errors.append("log_level: must be one of " + ", ".join(LOG_LEVELS))


def _copy(cfg):
    out = {}
    for k in cfg:
        v = cfg[k]
        out[k] = dict(v) if isinstance(v, dict) else v
    return out


def with_defaults(cfg):
    """``cfg`` with every missing key of ``DEFAULTS`` filled in (in place); returns it."""
    for k in DEFAULTS:
        if k not in cfg:
            cfg[k] = DEFAULTS[k]
    return cfg


def apply_update(cfg, changes):
    """Merge a ``set_config`` command's ``changes`` into ``cfg``: return ``(new_cfg, errors)``.

    Top-level keys replace; ``broker`` and ``wifi`` objects merge key by key; a None value
    removes the key. ``device_id`` cannot change. On any error the original ``cfg`` comes
    back unchanged with the errors; ``cfg`` itself is never modified.
    """
    if not isinstance(changes, dict):
        return cfg, ["changes: must be an object, got " + _tname(changes)]
    if "device_id" in changes and changes["device_id"] != cfg.get("device_id"):
        return cfg, ["device_id: cannot be changed"]
    new = _copy(cfg)
    for k in changes:
        v = changes[k]
        if v is None:
            new.pop(k, None)
        elif (
            (k == "broker" or k == "wifi") and isinstance(v, dict) and isinstance(new.get(k), dict)
        ):
            section = new[k]
            for sk in v:
                if v[sk] is None:
                    section.pop(sk, None)
                else:
                    section[sk] = v[sk]
        else:
            new[k] = dict(v) if isinstance(v, dict) else v
    new = with_defaults(new)
    errors = validate(new)
    if errors:
        return cfg, errors
    return new, []
