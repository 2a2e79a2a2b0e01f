# Runs inside MicroPython: heap held by the shared core with a workflow loaded. One JSON line.
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


ORDER = ("shared.hmac256", "shared.filters", "shared.program", "shared.executor", "shared.protocol")


def load_one(name):
    gc.collect()
    a = gc.mem_alloc()
    __import__(name)
    gc.collect()
    R["per"][name] = gc.mem_alloc() - a


def load_modules():
    R["per"] = {}
    for name in ORDER:
        load_one(name)
    m = sys.modules
    R["mods"] = (
        m["shared.executor"],
        m["shared.filters"],
        m["shared.hmac256"],
        m["shared.program"],
        m["shared.protocol"],
    )


class Host:
    def output(self, i, v):
        pass

    def publish(self, i, v):
        pass

    def set_period(self, i, ms):
        pass


def load_workflow():
    m = R["mods"]
    R["prog"] = m[3].Program(bytes.fromhex(R["cfg"]["workflow_blob"]))
    R["ex"] = m[0].Executor(R["prog"], Host(), lambda: 0)
    R["ex"].start()


class Link:
    # the network is not part of the heap budget being measured; the node's buffers are
    connected = False
    on_message = None

    def close(self):
        pass


def load_firmware():
    import os

    from firmware.node import Node
    from firmware.simhal import SimHal, VirtualClock

    root = "/flash/node"
    os.mkdir(root)
    os.mkdir(root + "/wf")
    with open(root + "/wf/current.bin", "wb") as f:
        f.write(bytes.fromhex(R["cfg"]["workflow_blob"]))
    with open("/repo/hw/boards/esp32-devkitc.json") as f:
        profile = json.load(f)
    clock = VirtualClock(ticks=5)
    cfg = {
        "device_id": "dev1",
        "fleet": "f1",
        "hmac_key": "00" * 32,
        "broker": {"host": "x", "port": 1, "tls": False},
    }
    hal = SimHal(profile, 1, clock.ticks_ms)
    R["node"] = Node(cfg, hal, root, Link(), clock.ticks_ms, rand4=lambda: b"1234")
    R["node"].wf.boot()


def report():
    out = {}
    if "m3" in R:
        out["firmware_total"] = R["m3"] - R["m0"]
        out["firmware_extra"] = R["m3"] - R["m2"]
    out["modules"] = R["m1"] - R["m0"]
    out["workflow"] = R["m2"] - R["m1"]
    out["total"] = R["m2"] - R["m0"]
    out["per_module"] = R["per"]
    out["loaded_from"] = [m.__file__ for m in R["mods"]]
    print(json.dumps(out))


config()
mark("m0")
load_modules()
mark("m1")
load_workflow()
mark("m2")
if R["cfg"].get("firmware"):
    load_firmware()
    mark("m3")
report()
