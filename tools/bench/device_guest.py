# Runs inside MicroPython for `orrery bench device`. Reads /bench/config.json, prints one JSON line.
import gc
import json
import time

import host
import micropython

from tools.bench import naive_filters

with open("/bench/config.json") as f:
    CFG = json.load(f)
N = CFG["samples"]


def fuel():
    return int(host.call("fuel", ""))


def noop(x):
    return x


def measure(update, xs):
    """Cost of calling update(x) for every x: fuel, µs and bytes allocated per call."""
    n = len(xs)
    gc.collect()
    m0 = micropython.mem_total()
    f0 = fuel()
    t0 = time.ticks_us()
    for i in range(n):
        update(xs[i])
    t1 = time.ticks_us()
    f1 = fuel()
    m1 = micropython.mem_total()
    return {
        "fuel": (f0 - f1) / n,
        "us": time.ticks_diff(t1, t0) / n,
        "alloc_bytes": (m1 - m0) / n,
    }


def locked_allocs(update, xs):
    """How many of the calls raise MemoryError under heap_lock (i.e. need the heap)."""
    bad = 0
    for i in range(len(xs)):
        micropython.heap_lock()
        try:
            update(xs[i])
        except MemoryError:
            bad += 1
        finally:
            micropython.heap_unlock()
    return bad


def net(m, base):
    return {
        "fuel": m["fuel"],
        "us": m["us"],
        "fuel_net": m["fuel"] - base["fuel"],
        "us_net": m["us"] - base["us"],
        "alloc_bytes": m["alloc_bytes"],
    }


def bench_pair(real, naive, xs, warm):
    for i in range(warm):
        real.update(xs[i])
        naive.update(xs[i])
    base = measure(noop, xs)
    r = net(measure(real.update, xs), base)
    r["heap_lock_allocations"] = locked_allocs(real.update, xs[: min(len(xs), 200)])
    nv = net(measure(naive.update, xs), base)
    return {
        "int": r,
        "naive_float": nv,
        "ratio_fuel": nv["fuel"] / r["fuel"],
        "ratio_us": nv["us"] / r["us"] if r["us"] else None,
    }


def run():
    from shared import executor, filters, program

    out = {
        "runtime": "MicroPython "
        + ".".join(str(v) for v in __import__("sys").implementation.version[:3])
        + " (WASI, 32-bit)"
    }
    xs = CFG["inputs"]
    res = []
    for item in CFG["filters"]:
        real = filters.build(item["code"], tuple(item["params"]))
        naive = naive_filters.make(item["spec"], item["period_ms"])
        r = bench_pair(real, naive, xs, 128)
        r["name"] = item["name"]
        res.append(r)
    out["filters"] = res

    chain_specs = CFG["chain"]
    real = filters.build_chain([(c["code"], tuple(c["params"])) for c in chain_specs])
    naive = naive_filters.Chain(
        [naive_filters.make(c["spec"], c["period_ms"]) for c in chain_specs]
    )
    out["chain"] = bench_pair(real, naive, xs, 128)
    out["chain"]["filters"] = [c["spec"]["type"] for c in chain_specs]

    prog = program.Program(bytes.fromhex(CFG["workflow_blob"]))

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

    clock = Clock()
    h = Host()
    ex = executor.Executor(prog, h, clock)
    ex.start()
    n_inputs = len(prog.input_names)
    wx = CFG["workflow_inputs"]

    class Feeder:
        # One workflow step per call: advance virtual time, feed the next input its sample, tick.
        def __init__(self):
            self.i = 0

        def update(self, x):
            clock.t = (clock.t + 250) & 0x3FFFFFFF
            ex.feed(self.i, x)
            ex.tick()
            self.i += 1
            if self.i == n_inputs:
                self.i = 0

    feeder = Feeder()
    for i in range(256):
        feeder.update(wx[i])
    base = measure(noop, wx)
    step = net(measure(feeder.update, wx), base)
    step["heap_lock_allocations"] = locked_allocs(feeder.update, wx[:400])
    step["transitions"] = ex.transitions
    step["outputs_set"] = h.outputs
    step["events_published"] = h.publishes
    out["workflow_step"] = step
    return out


print(json.dumps(run()))
