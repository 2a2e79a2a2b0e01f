# Runs inside MicroPython for `orrery bench device`. Reads /bench/config.json, prints one JSON line.
#
# One task per interpreter (a filter, the chain, or the workflow), with automatic garbage
# collection off: on the WASI build the collector cannot see call frames that live on the
# heap (functions with more than ~11 words of locals and stack) and would free live objects.
# Each task's allocations fit the ~1 MB heap, so no collection is ever needed.
import gc
import json
import sys
import time

import host
import micropython

from shared.filters import catalog
from shared.workflow import executor, program
from tools.dev.bench import naive_filters

gc.disable()
with open("/bench/config.json") as f:
    CFG = json.load(f)
TASK = CFG["task"]
XS = CFG["inputs"]
N = len(XS)
M = {"m0": 0, "f0": 0, "t0": 0, "t1": 0, "f1": 0, "m1": 0}  # preset: no dict growth mid-measure


def fuel():
    return int(host.call("fuel", ""))


def noop(x):
    return x


def loop(u, xs):
    for x in xs:
        u(x)


def measure(u, xs):
    M["m0"] = micropython.mem_total()
    M["f0"] = fuel()
    M["t0"] = time.ticks_us()
    loop(u, xs)
    M["t1"] = time.ticks_us()
    M["f1"] = fuel()
    M["m1"] = micropython.mem_total()
    n = len(xs)
    return {
        "fuel": (M["f0"] - M["f1"]) / n,
        "us": time.ticks_diff(M["t1"], M["t0"]) / n,
        "alloc_bytes": (M["m1"] - M["m0"]) / n,
    }


def locked(u, x):
    micropython.heap_lock()
    try:
        u(x)
        return 0
    except MemoryError:
        return 1
    finally:
        micropython.heap_unlock()


def locked_allocs(u, xs):
    """How many calls fail under heap_lock (an allocation raises MemoryError there)."""
    bad = 0
    for x in xs:
        bad += locked(u, x)
    return bad


def net(m, base):
    # The same loop around a no-op: what measuring itself costs (including the fuel probe's
    # own allocation), subtracted so that "alloc_bytes" is the filter's own.
    m["fuel_net"] = m["fuel"] - base["fuel"]
    m["us_net"] = m["us"] - base["us"]
    m["alloc_bytes"] = m["alloc_bytes"] - base["alloc_bytes"]
    return m


ROUNDS = 5  # interleaved rounds; each figure is the median of its rounds (time is noisy)
P = {"real": None, "naive": None, "base": None, "rs": [], "ns": []}


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def setup(real, naive):
    P["real"] = real
    P["naive"] = naive
    loop(real.update, XS[:128])
    loop(naive.update, XS[:128])
    measure(noop, XS[:10])  # first-call allocations of the measuring code itself
    P["base"] = measure(noop, XS)


def one_round():
    # real and naive alternate, so both see the same machine load
    P["rs"].append(net(measure(P["real"].update, XS), P["base"]))
    P["ns"].append(net(measure(P["naive"].update, XS), P["base"]))


def result():
    rs, ns = P["rs"], P["ns"]
    ratios = []
    for i in range(len(rs)):
        ratios.append(ns[i]["us"] / rs[i]["us"] if rs[i]["us"] else 0.0)
    r = {}
    nv = {}
    for k in rs[0]:
        r[k] = median([m[k] for m in rs])
        nv[k] = median([m[k] for m in ns])
    r["heap_lock_allocations"] = locked_allocs(P["real"].update, XS[:200])
    return {
        "int": r,
        "naive_float": nv,
        "ratio_fuel": nv["fuel"] / r["fuel"],
        "ratio_us": median(ratios),
        "ratio_us_rounds": ratios,
    }


OUT = {"runtime": "MicroPython {}.{}.{} (WASI, 32-bit)".format(*sys.implementation.version[:3])}
if TASK == "filter":
    ITEM = CFG["filter"]
    setup(
        catalog.build(ITEM["code"], tuple(ITEM["params"])),
        naive_filters.make(ITEM["spec"], ITEM["period_ms"]),
    )
elif TASK == "chain":
    CH = CFG["chain"]
    setup(
        catalog.build_chain([(c["code"], tuple(c["params"])) for c in CH]),
        naive_filters.Chain([naive_filters.make(c["spec"], c["period_ms"]) for c in CH]),
    )
if TASK != "workflow":
    # Collections only here, at the top level: the naive filters' garbage of one round is
    # freed before the next (see the note at the top on heap-allocated frames).
    for _ in range(ROUNDS):
        gc.collect()
        one_round()
    OUT["result"] = result()
    if TASK == "filter":
        OUT["result"]["name"] = ITEM["name"]
    else:
        OUT["result"]["filters"] = [c["spec"]["type"] for c in CH]
    print(json.dumps(OUT))


class Clock:
    def __init__(self):
        self.t = 0

    def __call__(self):
        return self.t


class Host:
    def __init__(self):
        self.outputs = 0
        self.publishes = 0

    def output(self, i, v):
        self.outputs += 1

    def publish(self, i, v):
        self.publishes += 1

    def set_period(self, i, ms):
        pass


class Feeder:
    """One workflow step per call: advance virtual time 250 ms, feed the next input, tick."""

    def __init__(self, ex, clock, n):
        self.ex = ex
        self.clock = clock
        self.n = n
        self.i = 0

    def update(self, x):
        c = self.clock
        c.t = (c.t + 250) & 0x3FFFFFFF
        self.ex.feed(self.i, x)
        self.ex.tick()
        self.i += 1
        if self.i == self.n:
            self.i = 0


if TASK != "workflow":
    raise SystemExit(0)
PROG = program.Program(bytes.fromhex(CFG["workflow_blob"]))
CLOCK = Clock()
HOST = Host()
EX = executor.Executor(PROG, HOST, CLOCK)
EX.start()
FEED = Feeder(EX, CLOCK, len(PROG.input_names))
WX = CFG["workflow_inputs"]
loop(FEED.update, WX[:256])
measure(noop, WX[:10])
BASE = measure(noop, WX)
STEP = net(measure(FEED.update, WX), BASE)
STEP["heap_lock_allocations"] = locked_allocs(FEED.update, WX[:400])
STEP["transitions"] = EX.transitions
STEP["outputs_set"] = HOST.outputs
STEP["events_published"] = HOST.publishes
OUT["result"] = STEP
print(json.dumps(OUT))
