# Runs inside MicroPython: heap held by the shared core with a workflow loaded, and by the
# whole firmware node. One JSON line.
#
# What is counted is what a board holds: the modules it keeps imported, the workflow, and
# (firmware) the node, its store and buffers, its board HAL and the interned names of every
# rare path it has run. Rare paths (loading a workflow, handling a command) import their
# modules on demand and the firmware drops them again (firmware.drop); this guest
# drops the same list (RARE, from the host) where the firmware would.
#
# Collections happen only from tiny functions called from a tiny top level: on the WASI build
# the collector cannot see heap-allocated call frames (more than ~11 words of locals and
# stack), so no such frame may be active when it runs. Automatic collection is off.
import gc
import json
import sys

gc.disable()
R = {}


def config():
    with open("/bench/config.json") as f:
        R["cfg"] = json.load(f)
    if R["cfg"].get("romfs"):
        # Execute in place from a ROMFS image, as a ROMFS-enabled board does from flash. The
        # image is read before the first mark: on a board it is flash, not heap.
        import vfs

        with open(R["cfg"]["romfs"], "rb") as f:
            R["img"] = f.read()
        vfs.mount(vfs.VfsRom(R["img"]), "/rom")
    sys.path.insert(0, R["cfg"]["path"])


def mark(key):
    gc.collect()
    R[key] = gc.mem_alloc()


# The shared modules a board keeps imported (the rest of shared/ is imported on demand), then
# the modules of the filters the workflow uses (config "filter_modules", from the host): a
# board imports those when it builds the workflow's chains, and keeps them.
ORDER = (
    "shared.filters",
    "shared.workflow.program",
    "shared.workflow.executor",
    "shared.wire.message",
)


def load_one(name):
    gc.collect()
    a = gc.mem_alloc()
    __import__(name)
    gc.collect()
    R["per"][name] = gc.mem_alloc() - a


def prepare():
    # Every key of R and of its tables exists before the first mark: their growth is this
    # benchmark's own bookkeeping, not heap a board holds.
    for k in ("m0", "m1", "m2", "m3", "m4", "prog", "ex", "clock", "node", "samples", "acks"):
        R[k] = None
    R["names"] = list(ORDER) + R["cfg"]["filter_modules"]
    R["per"] = {}
    for name in R["names"]:
        R["per"][name] = 0
    R["mods"] = [None] * len(R["names"])


def load_modules():
    names = R["names"]
    for i in range(len(names)):
        load_one(names[i])
        R["mods"][i] = sys.modules[names[i]]


def drop_rare():
    # firmware.drop (and drop_reports): forget the modules of the rare paths
    m = sys.modules
    for name in R["cfg"]["rare"]:
        if name in m:
            del m[name]
            pkg, _, attr = name.rpartition(".")
            try:
                delattr(m[pkg], attr)
            except AttributeError:
                pass


class Host:
    def output(self, i, v):
        pass

    def publish(self, i, v):
        pass

    def set_period(self, i, ms):
        pass


def load_workflow():
    m = sys.modules
    R["prog"] = m["shared.workflow.program"].Program(bytes.fromhex(R["cfg"]["workflow_blob"]))
    R["ex"] = m["shared.workflow.executor"].Executor(R["prog"], Host(), lambda: 0)
    R["ex"].start()
    drop_rare()  # the loader (shared.workflow.load), as the firmware drops it after a boot


def release_workflow():
    # the node loads the workflow itself: a board holds one copy
    R["prog"] = R["ex"] = None


def on_demand_one(names):
    # heap of a rare path's modules while imported (they are dropped again afterwards)
    gc.collect()
    a = gc.mem_alloc()
    for name in names:
        __import__(name)
    gc.collect()
    R["rare"][names[0]] = gc.mem_alloc() - a
    drop_rare()


def on_demand():
    R["rare"] = {}
    for group in (
        ["shared.workflow.load"],
        ["shared.workflow.start", "shared.workflow.snapshot"],
        ["shared.wire.verifier"],
        ["shared.wire.report"],
    ):
        on_demand_one(group)


# A stand-in for the board's machine module (BoardHal's hardware), built before the first
# mark as the real one is built into the firmware. On the ESP32 port Pin, ADC and I2C objects
# are static tables, not heap, so every constructor here returns the one object below (the
# fan's PWM object, a few dozen bytes of heap on a board, is not counted).
class _Hw:
    IN = 0
    OUT = 1
    PULL_UP = 2
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3

    def __call__(self, *args, **kw):
        return self

    def value(self, v=None):
        return 1

    def read_uv(self):
        return 1500000

    def writeto(self, addr, buf):
        pass

    def readfrom_into(self, addr, buf):
        r = R["cfg"]["sht31"]
        for i in range(6):
            buf[i] = r[i]

    def duty_u16(self, v):
        pass


class Machine:
    Pin = ADC = I2C = PWM = _Hw()


class Clock:
    def __init__(self):
        self.t = 5

    def ticks_ms(self):
        return self.t


class Link:
    # the network is not part of the heap budget being measured; the node's buffers are
    connected = False
    on_message = None

    def connect(self):
        self.connected = True
        return True

    def publish(self, topic, payload, qos=1, retain=False):
        return True

    def subscribe(self, topic, qos=1):
        return True

    def poll(self):
        pass

    def disconnect(self):
        self.connected = False

    def close(self):
        self.connected = False


def load_firmware():
    import os

    from firmware.hal import BoardHal
    from firmware.node import Node

    root = "/flash/node"
    os.mkdir(root)
    os.mkdir(root + "/wf")
    with open(root + "/wf/current.bin", "wb") as f:
        f.write(bytes.fromhex(R["cfg"]["workflow_blob"]))
    with open("/repo/hw/boards/esp32-devkitc.json") as f:
        profile = json.load(f)
    cfg = {
        "device_id": "dev1",
        "fleet": "f1",
        "hmac_key": "00" * 32,
        "broker": {"host": "x", "port": 1, "tls": False},
    }
    R["clock"] = Clock()
    hal = BoardHal(profile, Machine)
    R["node"] = Node(cfg, hal, root, Link(), R["clock"].ticks_ms, rand4=lambda: b"1234")
    R["node"].wf.boot()
    drop_rare()  # as the firmware does after a boot (it skips it while collection is off)


def run_firmware():
    # the node at work: 30 s of samples, batches and events, and one signed command
    node = R["node"]
    node._on_message(node.topics["down/cmd"], bytes.fromhex(R["cfg"]["command"]))
    for _ in range(300):
        R["clock"].t += 100
        node.step_main()
        while node.step_link():
            pass
    drop_rare()  # as the firmware does after a command
    R["samples"] = node.wf.samples
    R["acks"] = node.acks


def report():
    out = {}
    if R["m3"] is not None:
        out["firmware_boot"] = R["m3"] - R["m0"]
        out["firmware_total"] = R["m4"] - R["m0"]
        out["firmware_extra"] = R["m4"] - R["m2"]  # beyond the shared core and workflow
        out["samples"] = R["samples"]
        out["acks"] = R["acks"]
    out["modules"] = R["m1"] - R["m0"]
    out["workflow"] = R["m2"] - R["m1"]
    out["total"] = R["m2"] - R["m0"]
    out["per_module"] = R["per"]
    if "rare" in R:
        out["on_demand"] = R["rare"]
    out["loaded_from"] = [m.__file__ for m in R["mods"]]
    print(json.dumps(out))


config()
prepare()
mark("m0")
load_modules()
mark("m1")
load_workflow()
mark("m2")
if R["cfg"].get("firmware"):
    release_workflow()
    load_firmware()
    mark("m3")
    run_firmware()
    mark("m4")
else:
    on_demand()
report()
