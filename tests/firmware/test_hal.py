"""BoardHal against a fake ``machine`` module (no hardware is attached here), config.report,
and main.py's control flow run with injected fakes."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from cloud.orrery.sim.hal import VirtualClock
from firmware import config, hal, safemode, sht31
from firmware import main as board_main
from firmware.profile import parse_profile

REPO = Path(__file__).resolve().parents[2]
PROFILE = json.loads((REPO / "hw/boards/esp32-devkitc.json").read_text())


class FakeMachine:
    """Just enough of MicroPython's ``machine`` for BoardHal and main.py; records everything."""

    def __init__(self) -> None:
        m = self
        self.pins: dict[int, FakeMachine.Pin] = {}
        self.adcs: list[FakeMachine.ADC] = []
        self.pwms: list[FakeMachine.PWM] = []
        self.i2cs: list[FakeMachine.I2C] = []
        self.wdts: list[FakeMachine.WDT] = []
        self.resets = 0

        class Pin:
            OUT = 1
            IN = 0
            PULL_UP = 2

            def __init__(self, pin, mode=-1, pull=-1, value=None):
                self.pin, self.mode, self.pull = pin, mode, pull
                self.v = 1 if value is None else value
                m.pins[pin] = self

            def value(self, v=None):
                if v is None:
                    return self.v
                self.v = v

        class ADC:
            ATTN_0DB, ATTN_2_5DB, ATTN_6DB, ATTN_11DB = 10, 11, 12, 13

            def __init__(self, pin, atten=None):
                self.pin, self.atten, self.uv = pin, atten, 0
                m.adcs.append(self)

            def read_uv(self):
                return self.uv

        class I2C:
            def __init__(self, bus, scl=None, sda=None, freq=None):
                self.bus, self.scl, self.sda, self.freq = bus, scl, sda, freq
                self.data = bytes(6)
                self.writes: list[tuple[int, bytes]] = []
                self.reads = 0
                self.fail_write = self.fail_read = False
                m.i2cs.append(self)

            def writeto(self, addr, buf):
                if self.fail_write:
                    raise OSError(19)  # ENODEV: nobody acked the address
                self.writes.append((addr, bytes(buf)))

            def readfrom_into(self, addr, buf):
                if self.fail_read:
                    raise OSError(116)  # ETIMEDOUT
                self.reads += 1
                buf[:] = self.data

        class PWM:
            def __init__(self, pin, freq=None, duty_u16=None):
                self.pin, self.freq, self.duty = pin, freq, duty_u16
                m.pwms.append(self)

            def duty_u16(self, v):
                assert 0 <= v <= 65535
                self.duty = v

        class WDT:
            def __init__(self, timeout):
                self.timeout, self.feeds = timeout, 0
                m.wdts.append(self)

            def feed(self):
                self.feeds += 1

        self.Pin, self.ADC, self.I2C, self.PWM, self.WDT = Pin, ADC, I2C, PWM, WDT

    def reset(self) -> None:
        self.resets += 1


def frame(raw_t: int, raw_rh: int, bad_t: bool = False, bad_rh: bool = False) -> bytes:
    b = bytearray([raw_t >> 8, raw_t & 0xFF, 0, raw_rh >> 8, raw_rh & 0xFF, 0])
    b[2] = sht31.crc8(b, 0, 2) ^ (1 if bad_t else 0)
    b[5] = sht31.crc8(b, 3, 5) ^ (1 if bad_rh else 0)
    return bytes(b)


@pytest.fixture
def m() -> FakeMachine:
    return FakeMachine()


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(sht31, "sleep_ms", lambda ms: None)
    monkeypatch.setattr(board_main, "sleep_ms", lambda ms: None)


@pytest.fixture
def ticks(monkeypatch) -> VirtualClock:
    clk = VirtualClock(ticks=(1 << 30) - 100)
    monkeypatch.setattr(sht31, "ticks_ms", clk.ticks_ms)
    return clk


# --- ADC ------------------------------------------------------------------------------------


def test_adc_scaling_saturation_and_attenuation(m):
    profile = {
        "channels": {
            "a": {"kind": "adc", "pin": 32, "atten": "0db"},
            "b": {"kind": "adc", "pin": 33, "atten": "2_5db"},
            "c": {"kind": "adc", "pin": 34, "atten": "6db"},
            "d": {"kind": "adc", "pin": 35, "atten": "11db"},
        }
    }
    b = hal.BoardHal(profile, m)
    assert [a.atten for a in m.adcs] == [10, 11, 12, 13]
    assert [a.pin.pin for a in m.adcs] == [32, 33, 34, 35]
    adc = m.adcs[0]
    for uv, mv in [
        (0, 0),
        (999, 0),
        (1000, 1),
        (1234567, 1234),
        (3_300_000, 3300),
        (32_767_999, 32767),
        (40_000_000, 32767),
        (-50_000_000, -32767),
    ]:
        adc.uv = uv
        assert b.read(0) == mv


# --- SHT31 ----------------------------------------------------------------------------------


def test_sht31_conversion_matches_the_datasheet(m, ticks):
    b = hal.BoardHal(PROFILE, m)
    i2c = m.i2cs[0]
    t, h = b.channel_names.index("temp"), b.channel_names.index("humidity")
    for raw in list(range(0, 65536, 997)) + [65535]:
        i2c.data = frame(raw, raw)
        assert b.read(t) == round(-4500 + 17500 * raw / 65535)
        assert b.read(h) == round(10000 * raw / 65535)
    assert i2c.writes[0] == (68, b"\x24\x00")
    assert (i2c.bus, i2c.scl.pin, i2c.sda.pin, i2c.freq) == (0, 22, 21, 400000)
    assert len(m.i2cs) == 1


def test_sht31_crc_and_bus_errors_give_none(m, ticks):
    b = hal.BoardHal(PROFILE, m)
    i2c = m.i2cs[0]
    t, h = b.channel_names.index("temp"), b.channel_names.index("humidity")
    i2c.data = frame(26214, 32768, bad_t=True)
    assert b.read(t) is None
    assert b.read(h) is None  # a garbled measurement is not cached
    i2c.data = frame(26214, 32768, bad_rh=True)
    assert b.read(h) is None
    i2c.data = frame(26214, 32768)
    assert (b.read(t), b.read(h)) == (2500, 5000)
    i2c.fail_write = True
    assert b.read(t) is None
    i2c.fail_write, i2c.fail_read = False, True
    assert b.read(t) is None
    i2c.fail_read = False
    assert b.read(t) == 2500


def test_sht31_one_transaction_per_sample_instant(m, ticks):
    b = hal.BoardHal(PROFILE, m)
    i2c = m.i2cs[0]
    t, h = b.channel_names.index("temp"), b.channel_names.index("humidity")
    i2c.data = frame(26214, 32768)
    assert (b.read(t), b.read(h)) == (2500, 5000)
    assert i2c.reads == 1
    i2c.data = frame(26215, 32770)
    assert b.read(t) == 2500  # temperature was already handed out: measure again
    assert i2c.reads == 2
    ticks.advance(249)
    assert b.read(h) == 5000  # humidity from that measurement, across the tick wrap
    assert i2c.reads == 2
    assert b.read(t) == 2500
    ticks.advance(250)
    assert b.read(h) == 5000  # stale after 250 ms
    assert i2c.reads == 4


# --- outputs and the safe-mode pin ----------------------------------------------------------


def test_outputs_gpio_and_pwm(m):
    b = hal.BoardHal(PROFILE, m)
    assert b.output_names == ["fan", "led", "relay1", "relay2"]
    relay = b.output_names.index("relay1")
    fan = b.output_names.index("fan")
    assert m.pins[26].mode == m.Pin.OUT and m.pins[26].v == 0
    assert m.pwms[0].pin.pin == 25 and m.pwms[0].duty == 0 and m.pwms[0].freq == 1000
    assert b.set_output(relay, 1) == 1 and m.pins[26].v == 1
    assert b.set_output(relay, 7) == 1
    assert b.set_output(relay, 0) == 0 and m.pins[26].v == 0
    assert b.set_output(fan, 1023) == 1023 and m.pwms[0].duty == 65535
    assert b.set_output(fan, 512) == 512 and m.pwms[0].duty == round(512 * 65535 / 1023)
    assert b.set_output(fan, 5000) == 1023 and m.pwms[0].duty == 65535
    assert b.set_output(fan, -1) == 0 and m.pwms[0].duty == 0
    assert b.outputs == [0, 0, 0, 0]
    b.set_output(b.output_names.index("led"), 1)
    assert b.outputs == [0, 1, 0, 0]
    assert "pump" not in b.output_names


@pytest.mark.parametrize("top", [1, 3, 100, 1023, 4095, 16383, 40000, 65534, 65535])
def test_pwm_duty_scaling_is_exact_enough_and_stays_small(m, top):
    profile = {"outputs": {"p": {"kind": "pwm", "pin": 4, "max": top, "freq": 20000}}}
    b = hal.BoardHal(profile, m)
    scale = b._oscale[0]
    assert m.pwms[0].freq == 20000
    for v in sorted({0, 1, top // 3, top // 2, top - 1, top}):
        assert v * scale + 8192 < 1 << 30  # a small int on MicroPython
        b.set_output(0, v)
        assert abs(m.pwms[0].duty - v * 65535 / top) <= 1
    assert m.pwms[0].duty == 65535


def test_safe_mode_pin(m):
    b = hal.BoardHal(PROFILE, m)
    pin = m.pins[0]
    assert (pin.mode, pin.pull) == (m.Pin.IN, m.Pin.PULL_UP)
    assert not b.safe_mode_pin_held()
    pin.v = 0
    assert b.safe_mode_pin_held()
    assert not hal.BoardHal({"channels": {}}, m).safe_mode_pin_held()


# --- profile validation ---------------------------------------------------------------------


def _with(path: str, value) -> dict:
    p = copy.deepcopy(PROFILE)
    *parents, last = path.split(".")
    d = p
    for k in parents:
        d = d[k]
    if value is None:
        del d[last]
    else:
        d[last] = value
    return p


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("channels.adc1.kind", None, "channel 'adc1': missing 'kind'"),
        ("channels.adc1.kind", "spi", "channel 'adc1': unknown kind 'spi' (known: adc, i2c)"),
        ("channels.adc1", 5, "channel 'adc1': missing 'kind'"),
        ("channels.adc2.pin", None, "channel 'adc2': 'pin' must be an int in 0..63"),
        (
            "channels.adc2.atten",
            "12db",
            "channel 'adc2': 'atten' must be one of 0db, 2_5db, 6db, 11db",
        ),
        (
            "channels.temp.sensor",
            "bme280",
            "channel 'temp': unknown sensor 'bme280' (known: sht31)",
        ),
        ("channels.temp.address", 200, "channel 'temp': 'address' must be an int in 0..127"),
        (
            "channels.humidity.quantity",
            "pressure",
            "channel 'humidity': 'quantity' must be temperature or humidity",
        ),
        ("i2c", None, "channel 'humidity': needs the profile's 'i2c' bus"),
        ("i2c.scl", "22", "i2c bus: 'scl' must be an int in 0..63"),
        ("outputs.fan.kind", "dac", "output 'fan': unknown kind 'dac' (known: gpio, pwm)"),
        ("outputs.fan.max", None, "output 'fan': 'max' must be an int in 1..65535"),
        ("outputs.led.pin", True, "output 'led': 'pin' must be an int in 0..63"),
        ("outputs.relay1", {}, "output 'relay1': missing 'kind'"),
        ("channels", [], "profile: 'channels' must be an object"),
        ("safe_mode_pin", 99, "profile: 'safe_mode_pin' must be an int in 0..63"),
    ],
)
def test_profile_errors_name_the_channel(m, path, value, message):
    with pytest.raises(ValueError) as e:
        hal.BoardHal(_with(path, value), m)
    assert str(e.value) == message
    assert m.adcs == [] and m.pins == {}  # checked before any hardware is touched


def test_the_repo_board_profiles_parse():
    for path in (REPO / "hw/boards").glob("*.json"):
        channels, outputs = parse_profile(json.loads(path.read_text()))
        assert channels and [c[0] for c in channels] == sorted(c[0] for c in channels)


# --- config.report --------------------------------------------------------------------------


def test_config_report(capsys):
    config.report([])
    assert capsys.readouterr().out == ""
    config.report(["broker.port: must be 1..65535, got 0", "fleet: required"], "/config.json")
    assert capsys.readouterr().out == (
        "---- config: 2 problems in /config.json ----\n"
        "  broker.port: must be 1..65535, got 0\n"
        "  fleet: required\n"
        "---- fix it (e.g. mpremote cp config.json :/config.json) and reset ----\n"
    )


# --- main.py --------------------------------------------------------------------------------

CONFIG = {
    "device_id": "gh-01",
    "fleet": "greenhouse",
    "broker": {"host": "localhost", "port": 1883, "tls": False},
    "hmac_key": "00112233445566778899aabbccddeeff",
    "board": "esp32-devkitc",
    "health_window_s": 60,
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    (tmp_path / "boards").mkdir()
    shutil.copy(REPO / "hw/boards/esp32-devkitc.json", tmp_path / "boards")
    return tmp_path


class Node:
    def __init__(self, action=None):
        self.calls: list[tuple] = []
        self.action = action

    def __call__(self, cfg, hal_, feed):
        self.calls.append((cfg, hal_, feed))
        if self.action:
            self.action(feed)


def _count(root: Path) -> int:
    return safemode.CrashCounter(str(root / "crash_count")).count


def _run(m, node, root: Path):
    return board_main.main(machine=m, run_node=node, root=str(root) + "/")


def test_main_safe_mode_pin_returns_without_starting_the_node(m, root, capsys, monkeypatch):
    real_init = hal.BoardHal.__init__

    def init(self, profile, machine=None, i2c=None):
        real_init(self, profile, machine, i2c)
        m.pins[profile["safe_mode_pin"]].v = 0  # the button is held

    monkeypatch.setattr(hal.BoardHal, "__init__", init)
    node = Node()
    assert _run(m, node, root) is False
    out = capsys.readouterr().out
    assert "SAFE MODE" in out and "safe-mode pin held" in out
    assert node.calls == [] and m.wdts == [] and m.resets == 0
    assert _count(root) == 0


def test_main_safe_mode_after_repeated_failed_boots(m, root, capsys):
    (root / "crash_count").write_text("3")
    node = Node()
    assert _run(m, node, root) is False
    assert "3 boots in a row failed before running healthy (limit 3)" in capsys.readouterr().out
    assert node.calls == [] and m.wdts == [] and _count(root) == 3


def test_main_bad_config_or_board_is_safe_mode(m, root, capsys):
    (root / "config.json").write_text(json.dumps(dict(CONFIG, fleet="no spaces")))
    node = Node()
    assert _run(m, node, root) is False
    out = capsys.readouterr().out
    assert "fleet: must be 1..64 chars of [A-Za-z0-9_.-]" in out and "SAFE MODE" in out
    (root / "config.json").write_text(json.dumps(dict(CONFIG, board="esp32-unknown")))
    assert _run(m, node, root) is False
    assert "board esp32-unknown:" in capsys.readouterr().out
    (root / "config.json").unlink()
    assert _run(m, node, root) is False
    assert "config: cannot read" in capsys.readouterr().out
    assert node.calls == [] and m.wdts == []


def test_main_starts_the_node_with_the_watchdog(m, root):
    def loop(feed):
        for _ in range(3):
            feed()

    node = Node(loop)
    assert _run(m, node, root) is True
    cfg, hal_, feed = node.calls[0]
    assert cfg["device_id"] == "gh-01" and isinstance(hal_, hal.BoardHal)
    assert m.wdts[0].timeout == board_main.WDT_TIMEOUT_MS and m.wdts[0].feeds == 3
    assert m.resets == 1  # node.run returning is not normal
    assert _count(root) == 1  # not yet healthy: the window is 60 s


def test_main_crash_is_counted_logged_and_reset(m, root, capsys):
    def crash(feed):
        raise RuntimeError("sensor exploded")

    for expected in (1, 2, 3):
        assert _run(m, Node(crash), root) is True
        assert _count(root) == expected
        assert m.resets == expected
    out = capsys.readouterr().out
    assert "RuntimeError: sensor exploded" in out and "resetting" in out
    assert "sensor exploded" in (root / "last_crash.txt").read_text()
    node = Node()
    assert _run(m, node, root) is False  # the fourth boot stops in safe mode
    assert node.calls == []


def test_main_crash_after_a_healthy_run_still_counts(m, root, monkeypatch):
    clk = VirtualClock()
    monkeypatch.setattr(safemode, "ticks_ms", clk.ticks_ms)

    def healthy_then_crash(feed):
        clk.advance(60_000)
        feed()
        assert _count(root) == 0
        raise OSError("flash gone")

    (root / "crash_count").write_text("2")
    assert _run(m, Node(healthy_then_crash), root) is True
    assert _count(root) == 1 and m.resets == 1


def test_main_keyboard_interrupt_is_not_a_crash(m, root, capsys):
    def interrupted(feed):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(m, Node(interrupted), root)
    assert "watchdog" in capsys.readouterr().out
    assert m.resets == 0 and _count(root) == 1


def test_main_import_failure_of_the_node_counts_as_a_crash(m, root, monkeypatch):
    import sys

    import firmware

    monkeypatch.delattr(firmware, "node", raising=False)
    monkeypatch.setitem(sys.modules, "firmware.node", None)  # the import raises ImportError
    assert _run(m, None, root) is True
    assert _count(root) == 1 and m.resets == 1
    assert "firmware.node" in (root / "last_crash.txt").read_text()
