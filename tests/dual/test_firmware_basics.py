"""Device config, uptime and wall clock, the HALs and safe mode, on CPython and MicroPython."""

import json

from _util import MICROPYTHON, REPO, allocates, raises

from cloud.orrery.sim.hal import SimHal, VirtualClock
from firmware import config, hal, safemode, sht31
from firmware.clock import TICKS_MASK, Uptime, WallClock, elapsed_ms
from shared import config as checks

WRAP = TICKS_MASK + 1  # 2**30


_tmp = []


def _writable_dir():
    # MicroPython gets a fresh /flash per module; CPython one temp dir, removed at exit
    if MICROPYTHON:
        return "/flash"
    if not _tmp:
        import atexit
        import shutil
        import tempfile

        _tmp.append(tempfile.mkdtemp(prefix="orrery-fw-"))
        atexit.register(shutil.rmtree, _tmp[0], True)
    return _tmp[0]


def _fresh(name):
    """A path in the writable dir with nothing at it yet."""
    import os

    path = _writable_dir() + "/" + name
    try:
        os.remove(path)
    except OSError:
        pass
    return path


def _profile():
    with open(REPO + "/hw/boards/esp32-devkitc.json") as f:
        return json.load(f)


def _valid():
    return {
        "device_id": "gh-01",
        "fleet": "greenhouse",
        "broker": {"host": "mqtt.example.org", "port": 8883, "tls": True, "ca": "/ca.pem"},
        "username": "gh-01",
        "password": "pw",
        "hmac_key": "00112233445566778899aabbccddeeff",
        "board": "esp32-devkitc",
        "wifi": {"ssid": "farm", "password": "secret123"},
    }


# --- config ---------------------------------------------------------------------------------


def test_config_valid():
    assert config.validate(_valid()) == []
    cfg = _valid()
    for k in ("username", "password", "wifi"):
        del cfg[k]
    del cfg["broker"]["ca"]
    cfg["broker"]["tls"] = False
    assert config.validate(cfg) == []
    cfg.update({"ntp_host": "time.example.org", "health_window_s": 10, "log_level": "debug"})
    assert config.validate(cfg) == []


def test_config_errors_are_exact():
    bad = {
        "device_id": "gh 01",
        "fleet": "",
        "broker": {"host": "", "port": 0, "tls": 1, "ca": "/x", "qos": 1},
        "hmac_key": "abc",
        "board": 7,
        "wifi": {"password": "x"},
        "health_window_s": True,
        "log_level": "loud",
        "zz": 1,
        "extra": 1,
    }
    assert config.validate(bad) == [
        "extra: unknown key",
        "zz: unknown key",
        "device_id: must be 1..64 chars of [A-Za-z0-9_.-]",
        "fleet: must be 1..64 chars of [A-Za-z0-9_.-]",
        "board: must be a string, got int",
        "broker.qos: unknown key",
        "broker.host: must be 1..253 chars",
        "broker.port: must be 1..65535, got 0",
        "broker.tls: must be a bool, got int",
        "broker.ca: only used with tls",
        "hmac_key: must be an even number of hex digits, 32..128",
        "wifi.ssid: required",
        "health_window_s: must be an int, got bool",
        "log_level: must be one of debug, info, warning, error",
    ]


def test_config_types_and_ranges():
    def errs(**changes):
        cfg = _valid()
        for k in changes:
            cfg[k] = changes[k]
        return config.validate(cfg)

    assert errs(broker={"host": "h", "port": True, "tls": False}) == [
        "broker.port: must be an int, got bool"
    ]
    assert errs(broker={"host": "h", "port": 65536, "tls": False}) == [
        "broker.port: must be 1..65535, got 65536"
    ]
    assert errs(broker={"host": "h", "port": 1, "tls": False}) == []
    assert errs(broker=[]) == ["broker: must be an object, got list"]
    assert errs(device_id="x" * 65) == ["device_id: must be 1..64 chars of [A-Za-z0-9_.-]"]
    assert errs(device_id="A-z_0.9") == []
    assert errs(fleet=None) == ["fleet: must be a string, got NoneType"]
    assert errs(hmac_key="0" * 31) == ["hmac_key: must be an even number of hex digits, 32..128"]
    assert errs(hmac_key="0" * 33) == ["hmac_key: must be an even number of hex digits, 32..128"]
    assert errs(hmac_key="g" * 32) == ["hmac_key: must be an even number of hex digits, 32..128"]
    assert errs(hmac_key="AbCd" * 8) == []
    assert errs(hmac_key=1) == ["hmac_key: must be a string, got int"]
    assert errs(health_window_s=9) == ["health_window_s: must be 10..86400, got 9"]
    assert errs(health_window_s=1.5) == ["health_window_s: must be an int, got float"]
    assert errs(password=5) == ["password: must be a string, got int"]
    assert errs(wifi={"ssid": "s" * 33}) == ["wifi.ssid: must be 1..32 chars"]
    assert config.validate({}) == [
        "device_id: required",
        "fleet: required",
        "broker: required",
        "hmac_key: required",
        "board: required",
    ]
    assert config.validate([]) == ["config: must be an object, got list"]


def test_config_load():
    d = _writable_dir()
    cfg, errors = config.load(d + "/nope.json")
    assert cfg is None and errors == ["config: cannot read " + d + "/nope.json"]
    with open(d + "/bad.json", "w") as f:
        f.write("{not json")
    assert config.load(d + "/bad.json") == (None, ["config: " + d + "/bad.json is not valid JSON"])
    with open(d + "/list.json", "w") as f:
        f.write("[1]")
    assert config.load(d + "/list.json") == (None, ["config: must be an object, got list"])
    with open(d + "/ok.json", "w") as f:
        f.write(json.dumps(_valid()))
    cfg, errors = config.load(d + "/ok.json")
    assert errors == []
    assert cfg["health_window_s"] == 120 and cfg["log_level"] == "info"
    assert cfg["ntp_host"] == "pool.ntp.org" and cfg["broker"]["port"] == 8883
    with open(d + "/port.json", "w") as f:
        f.write(json.dumps({"device_id": "a"}))
    cfg, errors = config.load(d + "/port.json")
    assert cfg["device_id"] == "a" and "fleet: required" in errors


def test_config_save_is_atomic_and_refuses_invalid():
    import os

    d = _writable_dir()
    path = d + "/saved.json"
    config.save(path, _valid())
    cfg, errors = config.load(path)
    assert errors == [] and cfg["fleet"] == "greenhouse"
    bad = _valid()
    bad["broker"]["port"] = 0
    e = raises(ValueError, config.save, path, bad)
    assert str(e) == "invalid config: broker.port: must be 1..65535, got 0"
    assert config.load(path)[0]["broker"]["port"] == 8883
    changed = _valid()
    changed["fleet"] = "orchard"
    config.save(path, changed)
    assert config.load(path)[0]["fleet"] == "orchard"
    assert "saved.json.tmp" not in os.listdir(d)


def test_config_apply_update():
    cfg = _valid()
    new, errors = config.apply_update(cfg, {"device_id": "other"})
    assert new is cfg and errors == ["device_id: cannot be changed"]
    new, errors = config.apply_update(cfg, {"device_id": "gh-01", "broker": {"port": 1883}})
    assert errors == [] and new["broker"] == {
        "host": "mqtt.example.org",
        "port": 1883,
        "tls": True,
        "ca": "/ca.pem",
    }
    assert cfg["broker"]["port"] == 8883  # the input is never modified
    assert new["health_window_s"] == 120  # defaults filled in
    new, errors = config.apply_update(cfg, {"broker": {"tls": False, "ca": None}, "wifi": None})
    assert errors == [] and "ca" not in new["broker"] and "wifi" not in new
    new, errors = config.apply_update(cfg, {"broker": {"tls": False}})
    assert new is cfg and errors == ["broker.ca: only used with tls"]
    assert config.apply_update(cfg, {"fleet": None}) == (cfg, ["fleet: required"])
    assert config.apply_update(cfg, {"colour": "red"}) == (cfg, ["colour: unknown key"])
    assert config.apply_update(cfg, [1]) == (cfg, ["changes: must be an object, got list"])
    new, errors = config.apply_update(cfg, {"log_level": "debug", "wifi": {"ssid": "barn"}})
    assert errors == [] and new["wifi"] == {"ssid": "barn", "password": "secret123"}


def test_config_changes_checked_before_they_meet_a_config():
    # the companion's check of a set_config (shared.config.check_changes): the same rules
    assert checks.check_changes({"log_level": "debug", "health_window_s": 300}) == []
    assert checks.check_changes({"broker": {"port": 1883}, "wifi": {"password": "x"}}) == []
    assert checks.check_changes({"broker": {"ca": None}, "ntp_host": None}) == []
    assert checks.check_changes({"health_window_s": 5}) == ["health_window_s: must be 10..86400, got 5"]
    assert checks.check_changes({"log_levl": "debug"}) == ["log_levl: unknown key"]
    assert checks.check_changes({"log_level": "loud"}) == [
        "log_level: must be one of debug, info, warning, error"
    ]
    assert checks.check_changes({"device_id": "x"}) == ["device_id: cannot be changed"]
    assert checks.check_changes({"fleet": None, "broker": {"host": None}}) == [
        "fleet: required",
        "broker.host: required",
    ]
    assert checks.check_changes({"broker": {"prt": 1}}) == ["broker.prt: unknown key"]
    assert checks.check_changes({"broker": {"tls": False, "ca": "/ca.pem"}}) == [
        "broker.ca: only used with tls"
    ]
    assert checks.check_changes({"broker": {"ca": "/ca.pem"}}) == []  # tls: the board's own
    assert checks.check_changes({"wifi": "barn"}) == ["wifi: must be an object, got str"]
    assert checks.check_changes([1]) == ["changes: must be an object, got list"]


def test_config_changes_the_companion_passes_the_board_accepts():
    # what check_changes lets through, apply_update accepts on a valid config (same rules)
    cfg = _valid()
    for changes in (
        {"log_level": "warning"},
        {"health_window_s": 10, "ntp_host": "time.example.org"},
        {"broker": {"port": 1883}, "wifi": {"ssid": "barn"}},
        {"username": None, "password": None},
    ):
        assert checks.check_changes(changes) == []
        new, errors = config.apply_update(cfg, changes)
        assert errors == [], (changes, errors)
    for changes in ({"health_window_s": 9}, {"colour": 1}, {"board": "a b"}):
        assert checks.check_changes(changes) != []
        assert config.apply_update(cfg, changes)[1] == checks.check_changes(changes)


# --- clock ----------------------------------------------------------------------------------


def test_elapsed_ms_across_the_wrap():
    assert elapsed_ms(5, 3) == 2
    assert elapsed_ms(2, WRAP - 3) == 5
    assert elapsed_ms(0, TICKS_MASK) == 1
    assert elapsed_ms(TICKS_MASK, 0) == TICKS_MASK


def test_uptime_across_tick_wraps():
    clk = VirtualClock(ticks=WRAP - 1234)
    up = Uptime(clk.ticks_ms)
    total = 0
    steps = [0, 1, 998, 1, 1000, 1233, 1, 999, 123456789, TICKS_MASK, 987654321, 1001, 700000003]
    steps = steps + steps + steps
    for step in steps:
        clk.advance(step)
        up.update()
        total += step
        assert 0 <= up.ms <= 999
        assert up.s * 1000 + up.ms == total
    assert total > 4 * WRAP  # crossed 2**30 several times
    assert up.s == total // 1000 and up.ms == total % 1000


def test_uptime_with_a_raw_wrapping_source():
    t = [WRAP - 10]

    def ticks():
        return t[0]

    up = Uptime(ticks)
    for _ in range(5):
        t[0] = (t[0] + 300000007) % WRAP
        up.update()
    assert (up.s, up.ms) == (1500000, 35)


def test_wallclock_anchor_math():
    clk = VirtualClock()
    up = Uptime(clk.ticks_ms)
    wall = WallClock()
    assert not wall.synced and wall.anchor() is None and wall.now_unix() is None
    clk.advance(5250)
    wall.sync(1700000000, 900, up)
    assert wall.synced and wall.anchor() == (5, 250, 1700000000, 900)
    assert wall.now_unix() == 1700000000
    clk.advance(99)
    assert wall.now_unix() == 1700000000
    clk.advance(1)
    assert wall.now_unix() == 1700000001
    for _ in range(6):  # several tick wraps later
        clk.advance(WRAP // 2 - 1)
        up.update()
    assert wall.now_unix() == 1700000000 + (900 + 100 + 6 * (WRAP // 2 - 1)) // 1000
    wall.sync(1800000000, 0, up)  # a resync replaces the anchor
    assert wall.anchor() == (up.s, up.ms, 1800000000, 0)
    assert raises(ValueError, wall.sync, 1700000000, 1000, up)
    assert raises(ValueError, wall.sync, -1, 0, up)
    assert raises(ValueError, wall.sync, 1700000000, True, up)
    assert raises(ValueError, wall.sync, 2**32, 0, up)


def mp_test_uptime_update_allocates_nothing():
    import time

    clk = VirtualClock(ticks=WRAP - 100)
    up = Uptime(clk.ticks_ms)
    for _ in range(5):
        clk.advance(99999)
        assert not allocates(up.update)
    assert up.s * 1000 + up.ms == 5 * 99999
    real = Uptime(time.ticks_ms)
    assert not allocates(real.update)


# --- SimHal and VirtualClock ---------------------------------------------------------------


def _run(seed, n=300, step=250, ppm=5000):
    clk = VirtualClock()
    sim = SimHal(_profile(), seed, clk.ticks_ms, dropout_ppm=ppm, spike_ppm=ppm)
    out = []
    for _ in range(n):
        for i in range(len(sim.channel_names)):
            out.append(sim.read(i))
        clk.advance(step)
    return out


# seed 42, all six channels once a second, 15% spikes and dropouts: CPython's numbers
GOLDEN = [2631, 1508, 269, 1544, 5492, 2150, 2633, 1508, 1169, None, 5497, 2151]
GOLDEN += [2636, 614, 1177, 1545, 5496, 650, 2635, 605, 1176, 1547, 5488, 2152]


def test_simhal_is_deterministic_for_a_seed():
    a = _run(7)
    assert a == _run(7)
    assert a != _run(8)
    # the same numbers on both runtimes: integer arithmetic only
    assert _run(42, n=4, step=1000, ppm=150000) == GOLDEN


def test_simhal_values_are_realistic():
    clk = VirtualClock()
    sim = SimHal(_profile(), 3, clk.ticks_ms)
    t = sim.channel_index("temp")
    h = sim.channel_index("humidity")
    temps = []
    hums = []
    for _ in range(24 * 12):  # a day, every 5 minutes
        for i in range(len(sim.channel_names)):
            v = sim.read(i)
            assert v is None or -32767 <= v <= 32767
            if i == t and v is not None:
                temps.append(v)
            if i == h and v is not None:
                assert 0 <= v <= 10000
                hums.append(v)
        clk.advance(300000)
    temps.sort()
    hums.sort()
    # a daily swing of about +-3.5 degC around 21.5, and humidity moving the other way
    assert 1700 < temps[0] < 1900 and 2400 < temps[-1] < 2600
    assert 2050 < temps[len(temps) // 2] < 2250
    assert 4100 < hums[0] < 4500 and 6500 < hums[-1] < 6900


def test_simhal_dropouts_and_spikes_follow_their_rates():
    clk = VirtualClock()
    sim = SimHal(_profile(), 11, clk.ticks_ms)
    i = sim.channel_index("adc1")
    sim.configure(
        "adc1",
        base=1500,
        amplitude=0,
        noise=2,
        drift=0,
        dropout_ppm=50000,
        spike_ppm=20000,
        spike=800,
    )
    none = spikes = 0
    n = 4000
    for _ in range(n):
        v = sim.read(i)
        if v is None:
            none += 1
        elif v > 1600 or v < 1400:
            assert v in (2300, 2299, 2298, 2301, 2302, 700, 699, 698, 701, 702)
            spikes += 1
        else:
            assert 1498 <= v <= 1502
        clk.advance(250)
    assert 140 < none < 260  # 5% of 4000 = 200
    assert 45 < spikes < 115  # 2% of the 3800 that were not dropped = 76
    sim.configure(i, dropout_ppm=0, spike_ppm=0)
    for _ in range(500):
        assert 1498 <= sim.read(i) <= 1502
    assert raises(ValueError, lambda: sim.configure("adc1", colour=1))
    assert raises(ValueError, lambda: sim.configure("adc1", period_s=0))
    assert raises(ValueError, lambda: sim.configure("adc1", dropout_ppm=1000001))
    assert raises(ValueError, lambda: sim.configure("nope", base=1))


def test_simhal_outputs_and_names():
    clk = VirtualClock()
    sim = SimHal(_profile(), 1, clk.ticks_ms)
    assert sim.channel_names == ["adc0", "adc1", "adc2", "adc3", "humidity", "temp"]
    assert sim.output_names == ["fan", "led", "relay1", "relay2"]
    assert sim.channel_index("temp") == 5 and sim.output_index("led") == 1
    e = raises(ValueError, sim.channel_index, "pressure")
    assert str(e) == "unknown channel 'pressure'"
    fan = sim.output_index("fan")
    relay = sim.output_index("relay1")
    clk.advance(1500)
    assert sim.set_output(relay, 5) == 1
    assert sim.set_output(relay, 1) == 1  # no change, not logged
    clk.advance(500)
    assert sim.set_output(fan, 2000) == 1023
    assert sim.set_output(fan, -3) == 0
    assert sim.set_output(relay, 0) == 0
    assert sim.outputs == [0, 0, 0, 0]
    assert sim.log == [(1500, relay, 1), (2000, fan, 1023), (2000, fan, 0), (2000, relay, 0)]
    assert not sim.safe_mode_pin_held()
    sim.pin_held = True
    assert sim.safe_mode_pin_held()
    sim.log_limit = 2
    sim.set_output(fan, 7)
    assert sim.log == [(2000, relay, 0), (2000, fan, 7)]


def test_virtual_clock():
    clk = VirtualClock(ticks=TICKS_MASK - 1)
    assert clk.unix_ms() is None
    clk.advance(3)
    assert clk.ticks_ms() == 1
    clk.advance(TICKS_MASK)
    assert clk.ticks_ms() == 0
    clk.advance(5 * WRAP + 7)
    assert clk.ticks_ms() == 7
    clk.set_unix_ms(1700000000000)
    clk.advance(1500)
    assert clk.unix_ms() == 1700000001500 and clk.ticks_ms() == 1507
    clk.set_unix_ms(None)
    assert clk.unix_ms() is None
    assert raises(ValueError, clk.advance, -1)


def mp_test_simhal_read_allocates_nothing():
    clk = VirtualClock(ticks=WRAP - 10)
    sim = SimHal(_profile(), 5, clk.ticks_ms, dropout_ppm=100000, spike_ppm=100000)
    fan = sim.output_index("fan")
    for _ in range(200):
        clk.advance(37)
        for i in range(6):
            assert not allocates(lambda i=i: sim.read(i))
    assert not allocates(lambda: sim.set_output(fan, 0))


# --- BoardHal on a fake machine module -----------------------------------------------------


class _Pin:
    OUT = 1
    IN = 0
    PULL_UP = 2

    def __init__(self, pin, mode=-1, pull=-1, value=None):
        self.pin = pin
        self.v = 1 if value is None else value

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v


class _ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3

    def __init__(self, pin, atten=None):
        self.atten = atten
        self.uv = 1650400

    def read_uv(self):
        return self.uv


class _I2C:
    def __init__(self, bus, scl=None, sda=None, freq=None):
        self.data = bytearray(6)
        self.transactions = 0

    def writeto(self, addr, buf):
        self.transactions += 1

    def readfrom_into(self, addr, buf):
        for i in range(6):
            buf[i] = self.data[i]


class _PWM:
    def __init__(self, pin, freq=None, duty_u16=None):
        self.duty = duty_u16

    def duty_u16(self, v):
        self.duty = v


class _Machine:
    Pin = _Pin
    ADC = _ADC
    I2C = _I2C
    PWM = _PWM


def _sht31_frame(raw_t, raw_rh):
    b = bytearray(6)
    b[0], b[1], b[3], b[4] = raw_t >> 8, raw_t & 0xFF, raw_rh >> 8, raw_rh & 0xFF
    b[2] = sht31.crc8(b, 0, 2)
    b[5] = sht31.crc8(b, 3, 5)
    return b


def test_sht31_crc8_datasheet_vector():
    assert sht31.crc8(b"\xbe\xef", 0, 2) == 0x92
    assert sht31.crc8(b"\x00\x00", 0, 2) == 0x81


def test_boardhal_reads_on_a_fake_machine():
    i2c = _I2C(0)
    i2c.data = _sht31_frame(26214, 32768)  # 25.00 degC, 50.00 %RH
    b = hal.BoardHal(_profile(), _Machine, i2c)
    assert b.read(b.channel_names.index("adc0")) == 1650
    assert b.read(b.channel_names.index("temp")) == 2500
    assert b.read(b.channel_names.index("humidity")) == 5000
    assert i2c.transactions == 1
    assert not b.safe_mode_pin_held()


def mp_test_boardhal_read_and_set_output_allocate_nothing():
    i2c = _I2C(0)
    i2c.data = _sht31_frame(26214, 32768)
    b = hal.BoardHal(_profile(), _Machine, i2c)
    for _ in range(3):
        assert not allocates(lambda: b.read(0))
        assert not allocates(lambda: b.read(5))
        assert not allocates(lambda: b.read(4))
    assert b.read(0) == 1650 and b.read(5) == 2500 and b.read(4) == 5000
    assert not allocates(lambda: b.set_output(0, 700))
    assert not allocates(lambda: b.set_output(1, 1))
    assert b.outputs == [700, 1, 0, 0]


# --- safe mode ------------------------------------------------------------------------------


def test_crash_counter_persists():
    path = _fresh("crash_count")
    c = safemode.CrashCounter(path)
    assert c.count == 0
    assert c.boot_started() == 1
    assert safemode.CrashCounter(path).count == 1
    c = safemode.CrashCounter(path)
    c.boot_started()
    c.crashed()  # already counted by boot_started
    assert safemode.CrashCounter(path).count == 2
    c.boot_ok()
    assert safemode.CrashCounter(path).count == 0
    c.crashed()  # a crash after the boot was healthy counts again
    assert safemode.CrashCounter(path).count == 1
    with open(path, "w") as f:
        f.write("garbage")
    assert safemode.CrashCounter(path).count == 0


def test_safe_mode_decision_table():
    decide = safemode.should_enter_safe_mode
    crash = "3 boots in a row failed before running healthy (limit 3)"
    assert decide(False, 0) == (False, "")
    assert decide(False, 2) == (False, "")
    assert decide(True, 0) == (True, "safe-mode pin held")
    assert decide(False, 3) == (True, crash)
    assert decide(True, 3) == (True, "safe-mode pin held; " + crash)
    assert decide(False, 7)[0]
    assert decide(False, 1, limit=1) == (
        True,
        "1 boots in a row failed before running healthy (limit 1)",
    )
    c = safemode.CrashCounter(_fresh("decision_count"))
    c.boot_started()
    c.boot_started()
    assert decide(False, c) == (False, "")
    c.boot_started()
    assert decide(False, c) == (True, crash)


class _WDT:
    def __init__(self):
        self.feeds = 0

    def feed(self):
        self.feeds += 1


def test_feeder_marks_the_boot_healthy_after_the_window():
    clk = VirtualClock(ticks=WRAP - 500)
    counter = safemode.CrashCounter(_fresh("feeder_count"))
    counter.boot_started()
    wdt = _WDT()
    f = safemode.Feeder(wdt, counter, 120000, clk.ticks_ms)
    clk.advance(119999)
    f.feed()
    assert wdt.feeds == 1 and not f.healthy and counter.count == 1
    clk.advance(1)
    f.feed()
    assert wdt.feeds == 2 and f.healthy and counter.count == 0
    assert safemode.CrashCounter(_writable_dir() + "/feeder_count").count == 0


def mp_test_feeder_feed_allocates_nothing():
    clk = VirtualClock()
    counter = safemode.CrashCounter(_fresh("feeder_alloc_count"))
    f = safemode.Feeder(_WDT(), counter, 1000, clk.ticks_ms)
    assert not allocates(f.feed)
    clk.advance(1000)
    f.feed()
    assert f.healthy
    assert not allocates(f.feed)


def test_rare_path_modules_are_forgotten_and_import_again():
    # what firmware.drop does on a board after a rare path (it skips it while collection is off)
    import sys

    import shared
    from firmware import RARE, forget
    from shared.workflow import load

    assert "shared.workflow.load" in RARE and load.load
    forget(("shared.workflow.load", "shared.not_loaded"))
    assert "shared.workflow.load" not in sys.modules and "load" not in dir(shared.workflow)
    from shared.workflow import load as again

    assert again.load and "shared.workflow.load" in sys.modules
