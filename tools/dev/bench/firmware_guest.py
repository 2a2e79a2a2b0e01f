# Runs inside MicroPython: the heap held by the WHOLE firmware as a board runs it, in steady
# state and at its peak while a workflow install and an app bundle install run. One JSON line.
#
# What runs is the board's own code, from .mpy (or ROMFS): /boot.py (firmware/slots.py, from
# source, as MicroPython runs it), /main.py's firmware.main.main (config, board profile, safe
# mode, crash counter, watchdog feeder), firmware.start.build (the UmqttLink and the node, its
# store, buffers and queues), micropython-lib's umqtt.simple imported as UmqttLink.connect
# imports it, the workflow booted from flash, then the main loop's and the link thread's
# passes (step_main, step_link) over a fake broker that answers what the link writes.
#
# Stand-ins for what a board has in C, outside the Python heap, are built before the first
# mark: the machine module, the network socket (an in-memory broker: its receive buffer plays
# lwip's), usocket. What they hand to the firmware is counted (the bytes a socket read
# returns, the poll result), as it is on a board.
#
# Collections happen only from tiny functions called from the top level: on the WASI build the
# collector cannot see heap-allocated call frames, so no such frame may be active when it runs.
# Automatic collection never happens either: the heap (-X heapsize) is far larger than the
# garbage between two collections. Collection stays *enabled*, so firmware.drop forgets the
# rare-path modules exactly as on a board.
#
# Peak: each pass of either loop is one step; before it the heap is collected and measured
# (live bytes), and the bytes it allocates are counted without collecting. live + allocated
# is an upper bound of what the heap held during that step (garbage made in the step is
# counted as if still alive). The peak is the largest of those bounds over the installs.
import gc
import json
import sys

import micropython

gc.collect()
R = {}


def config():
    with open("/bench/config.json") as f:
        R["cfg"] = json.load(f)
    c = R["cfg"]
    if c.get("romfs"):
        import vfs

        with open(c["romfs"], "rb") as f:
            R["img"] = f.read()
        vfs.mount(vfs.VfsRom(R["img"]), "/rom")
    sys.path.insert(0, c["path"] + "/lib")  # umqtt.simple, where mip puts it on a board
    sys.path.insert(0, c["path"])
    with open("/bench/packets.bin", "rb") as f:
        R["packets"] = f.read()


# --- stand-ins for the board's C modules ---------------------------------------------------


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

    def feed(self):
        pass

    def active(self, *a):
        return True

    def config(self, **kw):
        pass

    def isconnected(self):
        return False

    def connect(self, *a):
        pass


class Machine:
    # On the ESP32 port Pin, ADC, I2C and WDT objects are static tables, not heap.
    Pin = ADC = I2C = PWM = WDT = _Hw()

    def reset(self):
        R["resets"] += 1


class Network:
    # the ESP32's WLAN object is a static table too
    STA_IF = 0
    WLAN = _Hw()


class Time:
    # The board's time module with the bench's clock: the link's keepalive and ack timeouts
    # read ticks_ms, and the host's real clock there made a run's course (a PINGREQ in
    # flight or not) depend on how fast the host ran it.
    def __init__(self, clock):
        import time

        for k in dir(time):
            if not k.startswith("_"):
                setattr(self, k, getattr(time, k))
        self.ticks_ms = clock.ticks_ms


class USocket:
    # umqtt.simple's "import usocket as socket": connect() is not run here (no network)
    def socket(self, *a):
        raise OSError(1)

    def getaddrinfo(self, *a):
        raise OSError(1)


class Broker:
    """The socket after CONNACK: serves what the broker sends from a preallocated buffer and
    answers the board's PUBLISH (PUBACK), SUBSCRIBE (SUBACK) and PINGREQ (PINGRESP). Reading
    allocates the bytes returned, as a board's socket does; writing allocates nothing."""

    def __init__(self, cap):
        self.rx = bytearray(cap)
        self.mv = memoryview(self.rx)
        self.rn = 0
        self.rh = 0
        self.left = 0  # bytes of the current outgoing packet still to come
        self.pid = -1  # its packet id, to acknowledge once it is all written
        self.published = 0

    def feed(self, data):
        n = len(data)
        self.mv[self.rn : self.rn + n] = data
        self.rn += n

    def _put4(self, a, b, c, d):
        rx = self.rx
        i = self.rn
        rx[i] = a
        rx[i + 1] = b
        rx[i + 2] = c
        rx[i + 3] = d
        self.rn = i + 4

    def write(self, buf, n=None):
        if n is None:
            n = len(buf)
        if self.left:
            self.left -= n
        else:
            op = buf[0] & 0xF0
            ln = 0
            sh = 0
            i = 1
            while True:
                c = buf[i]
                ln |= (c & 0x7F) << sh
                i += 1
                if not c & 0x80:
                    break
                sh += 7
            self.left = ln - (n - i)
            if op == 0x30:
                self.published += 1
                if buf[0] & 6:
                    t = buf[i] << 8 | buf[i + 1]
                    self.pid = buf[i + 2 + t] << 8 | buf[i + 3 + t]
            elif op == 0x80:
                self._put4(0x90, 3, buf[i], buf[i + 1])
                self.rx[self.rn] = 1  # granted QoS 1
                self.rn += 1
            elif op == 0xC0:
                self.rx[self.rn] = 0xD0
                self.rx[self.rn + 1] = 0
                self.rn += 2
        if self.left == 0 and self.pid >= 0:
            self._put4(0x40, 2, self.pid >> 8, self.pid & 0xFF)
            self.pid = -1
        return n

    def read(self, n):
        h = self.rh
        if h + n > self.rn:
            n = self.rn - h
        self.rh = h + n
        return bytes(self.mv[h : h + n])

    def pending(self):
        return self.rh < self.rn

    def close(self):
        pass

    def settimeout(self, t):
        pass


class Poller:
    def __init__(self, sock):
        self.sock = sock

    def poll(self, ms):
        return self.sock.pending()


class Clock:
    def __init__(self):
        self.t = 5

    def ticks_ms(self):
        return self.t


PHASES = ("run", "command", "workflow", "health", "bundle")
MARKS = ("boot_py", "modules", "main", "node", "workflow", "connected", "steady_boot")
MARKS += ("steady", "after_bundle")


def prepare():
    # every key of R and of its tables exists before the first mark: their growth is this
    # benchmark's own bookkeeping, not heap a board holds
    c = R["cfg"]
    for k in ("G", "main_ret", "fw", "node", "link", "resets", "m0", "step_name", "umqtt"):
        R[k] = None
    for k in ("step_live", "step_a0", "step_c0", "step_p0", "i", "j", "k", "n", "busy", "loop"):
        R[k] = 0
    R["resets"] = 0
    R["marks"] = {}
    for k in MARKS:
        R["marks"][k] = 0
    R["modules"] = {}
    for k in c["resident_order"]:
        R["modules"][k] = 0
    # phase -> [steps, highest live before a step, highest live + allocated, and of the step
    # with that bound: its live, its loop (1 main, 2 link)]
    R["steps"] = {}
    for k in PHASES:
        R["steps"][k] = [0, 0, 0, 0, 0]
    R["clock"] = Clock()
    R["broker"] = Broker(len(R["packets"]) + 65536)
    sys.modules["time"] = Time(R["clock"])
    sys.modules["machine"] = Machine()
    sys.modules["usocket"] = USocket()
    sys.modules["network"] = Network()
    with open("/repo/firmware/slots.py") as f:
        R["boot_py"] = f.read()
    with open("/repo/firmware/entry.py") as f:
        R["main_py"] = f.read()
    R["G"] = {"__name__": "__main__"}
    with open("/repo/hw/boards/esp32-devkitc.json") as f:
        profile = f.read()
    import os

    for d in ("/flash/boards", "/flash/data", "/flash/data/wf"):
        os.mkdir(d)
    with open("/flash/boards/esp32-devkitc.json", "w") as f:
        f.write(profile)
    with open("/flash/config.json", "w") as f:
        f.write(json.dumps(c["device_config"]))
    with open("/flash/data/wf/current.bin", "wb") as f:
        f.write(bytes.fromhex(c["workflow_blob"]))
    R["ranges"] = c["packet_ranges"]
    R["gc_before"] = 0


# --- measuring ---------------------------------------------------------------------------


def live():
    gc.collect()
    return gc.mem_alloc()


def mark(key):
    R["marks"][key] = live() - R["m0"]


def begin(name):
    R["step_name"] = name
    R["step_live"] = live() - R["m0"]
    R["step_a0"] = gc.mem_alloc()
    R["step_c0"] = micropython.mem_current()
    R["step_p0"] = micropython.mem_peak()


def end():
    # bytes allocated in the step: gc.mem_alloc's growth, or more if the step's high-water
    # (micropython.mem_peak, in bytes requested) was above where it ended (frames, buffers
    # freed explicitly before the step ended)
    grew = gc.mem_alloc() - R["step_a0"]
    p1 = micropython.mem_peak()
    if p1 > R["step_p0"]:
        grew += p1 - micropython.mem_current()
    s = R["steps"][R["step_name"]]
    s[0] += 1
    if R["step_live"] > s[1]:
        s[1] = R["step_live"]
    if R["step_live"] + grew > s[2]:
        s[2] = R["step_live"] + grew
        s[3] = R["step_live"]
        s[4] = R["loop"]


# --- the board ---------------------------------------------------------------------------


def boot_py():
    # /boot.py is firmware/slots.py, compiled from source at every boot; its globals stay in
    # __main__, where /main.py runs too
    exec(R["boot_py"], R["G"])


def load_module(name):
    a = live()
    __import__(name)
    R["modules"][name] = live() - a


def hook(cfg, hal, feed):
    # firmware.main.main's run_node: on a board node.run never returns, and main.main's frame
    # keeps cfg, hal and the feeder (with the watchdog and the crash counter); here they are
    # kept in R, and node.run's body runs step by step from the top level
    R["fw"] = (cfg, hal, feed)


def main_py():
    # /main.py (firmware/entry.py) runs firmware.main.main(); its machine, node runner and
    # root are the stand-ins and the bench's flash
    exec("from firmware import main", R["G"])
    R["main_ret"] = R["G"]["main"].main(sys.modules["machine"], hook, "/flash/")
    R["resets"] = 0  # main resets the board when node.run returns, as hook's does


def rand4():
    return b"\x12\x34\x56\x78"


def build_node():
    # as firmware.node.run starts a board: firmware.start builds the node, then is dropped
    from firmware import RARE, drop, node, start

    cfg, hal, feed = R["fw"]
    R["node"] = start.build(node.Node, cfg, hal, "/flash/data", R["clock"].ticks_ms, rand4)
    R["link"] = R["node"].link
    drop(RARE)


def boot_workflow():
    R["node"].wf.boot()  # Node.start without the link thread, whose passes run below


def connect():
    # UmqttLink.connect: umqtt.simple opens the session (here its module is imported and
    # its client made as connect does; no network), then the link owns the socket
    link = R["link"]
    from umqtt.simple import MQTTClient

    c = MQTTClient(
        link.client_id, link.host, link.port, link.user, link.password, link.keepalive, link.ssl
    )
    topic, payload, retain, qos = link.will
    c.set_last_will(topic, payload, retain, qos)
    R["umqtt"] = sys.modules["umqtt.simple"].__file__
    link._sock = R["broker"]
    link._poller = Poller(R["broker"])
    link._tx = 0
    link._ping = None
    link.connected = True
    link.session_present = False
    R["node"].backoff.reset()
    R["node"]._on_connect()


def deliver(i):
    a, b = R["ranges"][i]
    R["broker"].feed(memoryview(R["packets"])[a:b])


def step_main():
    R["loop"] = 1
    R["node"].step_main()


def step_link():
    R["loop"] = 2
    return R["node"].step_link()


def tick(ms):
    R["clock"].t += ms


# The drivers below keep their loop state in R: a function that collects (or calls one that
# does) must keep its frame small enough to live on the C stack.


def flush_link(name):
    # the link thread's passes until it has nothing left to send
    R["n"] = 0
    while R["n"] < 200:
        R["n"] += 1
        begin(name)
        R["busy"] = step_link()
        end()
        if not R["busy"] or R["resets"]:
            return


def run_for(name, ms):
    # the main loop every 100 ms, the link thread after each pass
    R["i"] = ms // 100
    while R["i"] > 0:
        R["i"] -= 1
        tick(100)
        begin(name)
        step_main()
        end()
        flush_link(name)


def install(name, first, last):
    # command packets [first, last) arrive as a sender paced by the board's admission budget
    # sends them: a group of consecutive commands whose envelopes fit in "window" bytes (at
    # least one), then the next group once the board has handled and acknowledged them all.
    # The link thread reads them, the main loop handles one step per pass, the link thread
    # sends the acks; until all are done or the board resets
    R["j"] = first
    while R["j"] < last and R["resets"] == 0:
        R["k"] = 0
        while R["j"] < last and (R["k"] == 0 or R["k"] + size(R["j"]) <= R["cfg"]["window"]):
            R["k"] += size(R["j"])
            deliver(R["j"])
            R["j"] += 1
        consume(name)


def size(i):
    return R["cfg"]["envelope_bytes"][i]


def consume(name):
    # until the commands are handled, the last one's steps included (node.job: installs run
    # one step a pass)
    while R["resets"] == 0 and (R["broker"].pending() or R["node"].inbox or R["node"].job):
        tick(20)
        begin(name)
        step_link()
        end()
        tick(20)
        begin(name)
        step_main()
        end()
        flush_link(name)
        if not R["link"].connected and R["resets"] == 0:
            raise RuntimeError("link dropped: " + str(R["link"].last_error))


def report():
    c = R["cfg"]
    node = R["node"]
    out = {
        "marks": R["marks"],
        "modules": R["modules"],
        "steps": R["steps"],
        "samples": node.wf.samples,
        "published": R["broker"].published,
        "acks": node.acks,  # "\n<id> <code> <detail>\n..."
        "workflow": node.wf.prog.name + "@" + str(node.wf.prog.version) if node.wf.prog else None,
        "resets": R["resets"],
        "main_returned": R["main_ret"],
        "loaded_from": [sys.modules["firmware.node"].__file__, R["umqtt"]],
        "resident": sorted(k for k in sys.modules if k.split(".")[0] in c["packages"]),
    }
    print(json.dumps(out))


def load_modules():
    # the modules a board keeps, imported one by one first to tell what each holds
    names = R["cfg"]["resident_order"]
    for i in range(len(names)):
        load_module(names[i])


config()
prepare()
R["m0"] = live()
boot_py()
mark("boot_py")
load_modules()
mark("modules")
main_py()
mark("main")
build_node()
mark("node")
boot_workflow()
mark("workflow")
connect()
mark("connected")
flush_link("run")
run_for("run", R["cfg"]["run_ms"])
install("command", 0, 1)  # one run_command
run_for("run", 2000)
mark("steady_boot")
install("workflow", 1, 2)  # install_workflow: the next version, with migration
run_for("health", R["cfg"]["health_ms"])  # its health window passes: acked OK
mark("steady")
install("bundle", 2, len(R["ranges"]))  # install_bundle + its chunks: the last one reboots
mark("after_bundle")
report()
