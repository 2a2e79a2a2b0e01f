"""Board profiles: every profile in hw/boards is valid; the validator names each mistake."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from shared.workflow import compiler
from tools.board import profiles

REPO = Path(__file__).resolve().parents[3]
BOARDS = ["esp32-devkitc", "esp32-s3-devkitc-1", "esp32-c3-devkitm-1"]


@pytest.mark.parametrize("name", BOARDS)
def test_every_profile_is_valid(name):
    p = profiles.load(name)
    errors, _ = profiles.check(p)
    assert errors == []
    assert p["name"] == name
    assert p["flash_size"] in profiles.FLASH_SIZES
    assert profiles.main([str(REPO / "hw/boards" / f"{name}.json")]) == 0


def test_the_three_reference_boards_are_there():
    assert set(BOARDS) <= set(profiles.known())


def test_devkitc_keeps_what_the_firmware_reads():
    """Extended, never renamed: the keys and values firmware/hal.py and workflows use."""
    p = profiles.load("esp32-devkitc")
    assert p["chip"] == "esp32" and p["flash_size"] == "4MB"
    assert p["channels"]["adc0"] == {"kind": "adc", "pin": 36, "atten": "11db", "unit": "mV"}
    assert p["i2c"] == {"id": 0, "scl": 22, "sda": 21, "freq": 400000}
    assert p["outputs"]["fan"] == {"kind": "pwm", "pin": 25, "max": 1023}
    assert p["safe_mode_pin"] == 0
    parts = p["partitions"]
    assert (parts["table"], parts["vfs_offset"], parts["vfs_size"], parts["block_size"]) == (
        "micropython-4MiB",
        0x200000,
        0x200000,
        4096,
    )


def test_device_profile_is_what_the_firmware_reads():
    p = profiles.load("esp32-s3-devkitc-1")
    d = profiles.device_profile(p)
    assert set(d) == {"name", "chip", "channels", "i2c", "outputs", "safe_mode_pin"}


def _bad(name: str, path: str, value) -> list[str]:
    p = copy.deepcopy(profiles.load(name))
    keys = path.split(".")
    target = p
    for k in keys[:-1]:
        target = target[int(k)] if isinstance(target, list) else target[k]
    last = keys[-1]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return profiles.check(p)[0]


@pytest.mark.parametrize(
    "board, path, value, message",
    [
        ("esp32-devkitc", "channels.adc0.pin", 7, "channels.adc0: GPIO7 is not a usable pin"),
        ("esp32-devkitc", "channels.adc0.pin", 4, "channels.adc0: GPIO4 is not an ADC1 pin"),
        ("esp32-devkitc", "channels.adc1.atten", "12db", "'atten' must be one of"),
        ("esp32-devkitc", "outputs.relay1.pin", 34, "outputs.relay1: GPIO34 is input-only"),
        ("esp32-devkitc", "outputs.relay1.pin", 27, "GPIO27 is already used by outputs.relay1"),
        ("esp32-devkitc", "outputs.relay1.pin", 1, "GPIO1 is reserved (UART0 TX (console))"),
        ("esp32-devkitc", "i2c.sda", 39, "i2c.sda: GPIO39 is already used by channels.adc1"),
        ("esp32-s3-devkitc-1", "outputs.led.pin", 48, "GPIO48 is reserved (on-board RGB LED"),
        ("esp32-c3-devkitm-1", "channels.adc2.pin", 5, "GPIO5 is not an ADC1 pin"),
        ("esp32-devkitc", "safe_mode_pin", 26, "safe_mode_pin: GPIO26 is already used by"),
        ("esp32-devkitc", "flash_size", "3MB", "flash_size: must be one of"),
        ("esp32-devkitc", "chip", "esp8266", "chip: must be one of"),
        ("esp32-devkitc", "partitions.block_size", 512, "uses 4096-byte blocks"),
        ("esp32-devkitc", "partitions.bootloader_offset", 0, "bootloader goes at 0x1000"),
        ("esp32-s3-devkitc-1", "partitions.bootloader_offset", 0x1000, "goes at 0x0, not 0x1000"),
        ("esp32-devkitc", "partitions.vfs_size", 0x100000, "vfs_offset/vfs_size differ"),
        ("esp32-devkitc", "partitions.entries.2.offset", 0x11000, "must be 0x10000-aligned"),
        ("esp32-devkitc", "partitions.entries.3.size", 0x300000, "past the 0x400000-byte flash"),
        ("esp32-devkitc", "partitions.entries.1.offset", 0x9000, "phy_init and nvs overlap"),
        ("esp32-devkitc", "partitions.entries.0.offset", 0x8000, "starts inside the partition"),
    ],
)
def test_validator_names_the_mistake(board, path, value, message):
    errors = _bad(board, path, value)
    assert any(message in e for e in errors), errors


def test_strapping_pins_are_warnings_not_errors():
    errors, warnings = profiles.check(profiles.load("esp32-devkitc"))
    assert errors == []
    assert warnings == ["outputs.led: GPIO2 is a strapping pin; keep it floating at reset"]


def test_load_errors():
    with pytest.raises(profiles.ProfileError, match="not found .known: esp32-c3-devkitm-1"):
        profiles.load("esp32-nope")


@pytest.mark.parametrize("name", BOARDS)
def test_workflow_validator_checks_against_each_profile(name):
    p = profiles.load(name)
    defn = (REPO / "cloud/orrery/sim/workflows/greenhouse.json").read_bytes()
    assert compiler.errors(defn, p) == []
    bad = json.loads(defn)
    bad["inputs"][0]["channel"] = "adc9"
    errs = compiler.errors(json.dumps(bad).encode(), p)
    assert any("has no channel 'adc9'" in reason and name in reason for _, reason in errs), errs
