"""Board profiles (``hw/boards/*.json``): check one, and build a BoardHal's hardware from it.

Needed once per boot: ``BoardHal()`` imports this module and the node drops it again
(``firmware.drop``); ``firmware/hal.py`` documents channels and outputs.
"""

from firmware.sht31 import Sht31
from shared import const

# Channel and output kinds (firmware.hal keeps copies).
ADC = const(0)
I2C = const(1)
GPIO = const(0)
PWM = const(1)

_ATTEN = {"0db": "ATTN_0DB", "2_5db": "ATTN_2_5DB", "6db": "ATTN_6DB", "11db": "ATTN_11DB"}
_QUANTITIES = ("temperature", "humidity")


def _need_int(where, spec, key, lo, hi):
    v = spec.get(key)
    if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi):
        raise ValueError("{}: '{}' must be an int in {}..{}".format(where, key, lo, hi))
    return v


def _sorted_items(d, what):
    if not isinstance(d, dict):
        raise ValueError("profile: '{}' must be an object".format(what))
    return [(k, d[k]) for k in sorted(d)]


def parse_profile(profile):
    """Check a board profile; return ``(channels, outputs)`` in index order.

    Each is a list of ``(name, kind, spec)`` with kind ADC/I2C or GPIO/PWM. Raises
    ValueError naming the channel or output at fault.
    """
    if not isinstance(profile, dict):
        raise ValueError("profile: must be an object")
    channels = []
    for name, spec in _sorted_items(profile.get("channels", {}), "channels"):
        where = "channel '{}'".format(name)
        if not isinstance(spec, dict) or "kind" not in spec:
            raise ValueError(where + ": missing 'kind'")
        kind = spec["kind"]
        if kind == "adc":
            _need_int(where, spec, "pin", 0, 63)
            if spec.get("atten") not in _ATTEN:
                raise ValueError(where + ": 'atten' must be one of 0db, 2_5db, 6db, 11db")
            channels.append((name, ADC, spec))
        elif kind == "i2c":
            if spec.get("sensor") != "sht31":
                raise ValueError(
                    "{}: unknown sensor {!r} (known: sht31)".format(where, spec.get("sensor"))
                )
            _need_int(where, spec, "address", 0, 127)
            if spec.get("quantity") not in _QUANTITIES:
                raise ValueError(where + ": 'quantity' must be temperature or humidity")
            bus = profile.get("i2c")
            if not isinstance(bus, dict):
                raise ValueError(where + ": needs the profile's 'i2c' bus")
            for key in ("id", "scl", "sda"):
                _need_int("i2c bus", bus, key, 0, 63)
            channels.append((name, I2C, spec))
        else:
            raise ValueError("{}: unknown kind {!r} (known: adc, i2c)".format(where, kind))
    if len(channels) > 255:
        raise ValueError("profile: more than 255 channels")
    outputs = []
    for name, spec in _sorted_items(profile.get("outputs", {}), "outputs"):
        where = "output '{}'".format(name)
        if not isinstance(spec, dict) or "kind" not in spec:
            raise ValueError(where + ": missing 'kind'")
        kind = spec["kind"]
        _need_int(where, spec, "pin", 0, 63)
        if kind == "gpio":
            outputs.append((name, GPIO, spec))
        elif kind == "pwm":
            _need_int(where, spec, "max", 1, 65535)
            if "freq" in spec:
                _need_int(where, spec, "freq", 1, 40000000)
            outputs.append((name, PWM, spec))
        else:
            raise ValueError("{}: unknown kind {!r} (known: gpio, pwm)".format(where, kind))
    if "safe_mode_pin" in profile:
        _need_int("profile", profile, "safe_mode_pin", 0, 63)
    return channels, outputs


def build(hal, profile, machine=None, i2c=None):
    """``BoardHal(profile, machine, i2c)``: check ``profile`` and build ``hal``'s hardware."""
    if machine is None:
        import machine
    channels, outputs = parse_profile(profile)
    Pin = machine.Pin
    hal.channel_names = [c[0] for c in channels]
    hal._kinds = bytearray(len(channels))
    hal._quantity = bytearray(len(channels))
    hal._dev = []
    sensors = {}
    for i, (_name, kind, spec) in enumerate(channels):
        hal._kinds[i] = kind
        if kind == ADC:
            atten = getattr(machine.ADC, _ATTEN[spec["atten"]])
            hal._dev.append(machine.ADC(Pin(spec["pin"]), atten=atten))
            continue
        if i2c is None:
            bus = profile["i2c"]
            i2c = machine.I2C(
                bus["id"],
                scl=Pin(bus["scl"]),
                sda=Pin(bus["sda"]),
                freq=bus.get("freq", 100000),
            )
        addr = spec["address"]
        if addr not in sensors:
            sensors[addr] = Sht31(i2c, addr)
        hal._dev.append(sensors[addr])
        hal._quantity[i] = _QUANTITIES.index(spec["quantity"])

    hal.output_names = [o[0] for o in outputs]
    hal.outputs = [0] * len(outputs)
    hal._okinds = bytearray(len(outputs))
    hal._omax = [1] * len(outputs)
    hal._oscale = [0] * len(outputs)
    hal._out = []
    for i, (_name, kind, spec) in enumerate(outputs):
        hal._okinds[i] = kind
        if kind == GPIO:
            hal._out.append(Pin(spec["pin"], Pin.OUT, value=0))
        else:
            top = spec["max"]
            hal._omax[i] = top
            # duty_u16 = value * 65535 / top as value * scale >> 14; never past 2**30
            hal._oscale[i] = (65535 << 14) // top
            hal._out.append(machine.PWM(Pin(spec["pin"]), freq=spec.get("freq", 1000), duty_u16=0))

    pin = profile.get("safe_mode_pin")
    hal._safe = None if pin is None else Pin(pin, Pin.IN, Pin.PULL_UP)
