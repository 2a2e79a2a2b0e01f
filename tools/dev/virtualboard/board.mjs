// A virtual board: MicroPython's official WebAssembly port behind a TCP "serial port".
//
//   node board.mjs --port 0 --flash DIR [--state DIR] [--host 127.0.0.1]
//
// prints "listening HOST:PORT" once it accepts connections; `mpremote connect
// socket://HOST:PORT` then reaches it as it reaches a board over USB serial:
//
// - the REPL, raw REPL (Ctrl-A/Ctrl-B), raw-paste mode and Ctrl-C are MicroPython's own
//   (pyexec's event-driven REPL, fed one byte at a time);
// - Ctrl-D on an empty line (or sys.exit()) soft-resets: a fresh interpreter, "MPY: soft
//   reboot", /boot.py, and /main.py unless in the raw REPL, as on an ESP32;
// - machine.reset() hard-resets: a fresh interpreter, /boot.py and /main.py, friendly REPL;
// - the filesystem is the "flash": the directory DIR, loaded at every boot and written back
//   when the board is idle and before every reset, so files survive resets and restarts;
// - Ctrl-C interrupts running code whenever it reads the clock (time.sleep_ms, ticks_ms),
//   since the interpreter runs in a worker thread and the serial side never blocks;
// - one client at a time: a second connection is told the port is busy and closed.
//
// `machine` is tools/dev/virtualboard/machine.py (emulated ADC, SHT31 on I2C, GPIO, PWM, WDT).
// There is no network stack (no socket module) and no _thread in this port.
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";

const HERE = path.dirname(fileURLToPath(import.meta.url));
// The serial line: a ring buffer shared by the socket (main thread) and the interpreter
// (worker), which blocks on it with Atomics.wait whenever MicroPython reads stdin.
const RING = 1 << 16;
const [INTERRUPT, WRITE, READ, STOP] = [0, 1, 2, 3];

function parseArgs(argv) {
    const args = { host: "127.0.0.1", port: 0, flash: null, state: null };
    for (let i = 0; i < argv.length; i += 2) {
        const key = argv[i].replace(/^--/, "");
        if (!(key in args)) throw new Error(`unknown option ${argv[i]}`);
        args[key] = key === "port" ? Number(argv[i + 1]) : argv[i + 1];
    }
    if (!args.flash) throw new Error("--flash DIR is required");
    args.state = args.state || args.flash + ".state";
    return args;
}

if (isMainThread) {
    const args = parseArgs(process.argv.slice(2));
    fs.mkdirSync(args.flash, { recursive: true });
    fs.mkdirSync(args.state, { recursive: true });
    const ctrlBuf = new SharedArrayBuffer(16);
    const ringBuf = new SharedArrayBuffer(RING);
    const ctrl = new Int32Array(ctrlBuf);
    const ring = new Uint8Array(ringBuf);
    const worker = new Worker(fileURLToPath(import.meta.url), {
        workerData: {
            flash: path.resolve(args.flash),
            state: path.resolve(args.state),
            ctrlBuf,
            ringBuf,
        },
    });
    let client = null;
    worker.on("message", (m) => {
        if (m.type === "out" && client) client.write(Buffer.from(m.data));
        else if (m.type === "stopped") process.exit(0);
        else if (m.type === "log") process.stderr.write(m.text + "\n");
    });
    worker.on("error", (e) => {
        process.stderr.write(`virtual board: ${e.stack || e}\n`);
        process.exit(1);
    });
    const server = net.createServer((sock) => {
        if (client) {
            sock.end("virtual board: port busy (another client is connected)\r\n");
            return;
        }
        client = sock;
        sock.setNoDelay(true);
        sock.on("data", (d) => {
            let w = Atomics.load(ctrl, WRITE);
            const r = Atomics.load(ctrl, READ);
            for (const b of d) {
                if (w - r >= RING) break; // overrun: a UART drops what it cannot hold
                ring[w % RING] = b;
                w++;
            }
            if (d.includes(3)) Atomics.store(ctrl, INTERRUPT, 1);
            Atomics.store(ctrl, WRITE, w);
            Atomics.notify(ctrl, WRITE);
        });
        const gone = () => {
            if (client === sock) client = null;
        };
        sock.on("close", gone);
        sock.on("error", gone);
    });
    const stop = () => {
        Atomics.store(ctrl, STOP, 1);
        Atomics.notify(ctrl, WRITE);
    };
    process.on("SIGTERM", stop);
    process.on("SIGINT", stop);
    // started with a pipe on stdin (tools/dev/virtualboard): power off when the parent goes away
    if (fs.fstatSync(0).isFIFO()) {
        process.stdin.on("end", stop);
        process.stdin.on("error", stop);
        process.stdin.resume();
    }
    server.listen(args.port, args.host, () => {
        const a = server.address();
        process.stdout.write(`listening ${a.address}:${a.port}\n`);
    });
} else {
    await runBoard(workerData);
}

async function runBoard({ flash, state, ctrlBuf, ringBuf }) {
    const DEBUG = !!process.env.VB_DEBUG;
    const debug = (text) => parentPort.postMessage({ type: "log", text });
    const ctrl = new Int32Array(ctrlBuf);
    const ring = new Uint8Array(ringBuf);
    let rd = 0;
    // one byte from the serial line, or null after timeoutMs without one
    const readByte = (timeoutMs) => {
        let w = Atomics.load(ctrl, WRITE);
        if (w === rd) {
            if (timeoutMs > 0) Atomics.wait(ctrl, WRITE, w, timeoutMs);
            w = Atomics.load(ctrl, WRITE);
            if (w === rd) return null;
        }
        const b = ring[rd % RING];
        rd++;
        Atomics.store(ctrl, READ, rd);
        if (b === 3) Atomics.store(ctrl, INTERRUPT, 0);
        return b;
    };
    // MicroPython's blocking stdin (raw-paste mode, input()) is Emscripten's TTY, which
    // reads fs.readSync(process.stdin.fd): serve those reads from the serial line instead,
    // one byte at a time, sending any pending output first (raw-paste flow control).
    const stdinFd = process.stdin.fd;
    const origReadSync = fs.readSync;
    fs.readSync = function (fd, buf, offset, length, position) {
        if (fd !== stdinFd && fd !== 0) return origReadSync.apply(this, arguments);
        flush();
        for (;;) {
            const b = readByte(500);
            if (b !== null) {
                buf[offset || 0] = b;
                return 1;
            }
            if (Atomics.load(ctrl, STOP)) return 0;
        }
    };
    const { loadMicroPython } = await import("@micropython/micropython-webassembly-pyscript");
    const machineSrc = fs.readFileSync(path.join(HERE, "machine.py"));
    const vbfsSrc = fs.readFileSync(path.join(HERE, "vbfs.py"));
    let mp = null;
    let out = [];
    let muted = false;
    let dropOk = 0; // output bytes to drop: the raw REPL's "OK" after a raw-paste
    let lastFlush = Date.now();
    let mode = "friendly"; // pyexec's REPL mode, followed from Ctrl-A / Ctrl-B
    let hardReset = false;
    let resetCause = 1;
    let persisted = new Map(); // relative path -> Buffer, as last written to DIR

    const flush = () => {
        if (out.length) parentPort.postMessage({ type: "out", data: Uint8Array.from(out) });
        out = [];
        lastFlush = Date.now();
    };
    const emit = (text) => {
        for (const c of Buffer.from(text)) out.push(c);
        flush();
    };
    const poll = () => {
        if (mp && Atomics.compareExchange(ctrl, INTERRUPT, 1, 0) === 1) {
            mp._module._mp_sched_keyboard_interrupt();
        }
        if (out.length && Date.now() - lastFlush > 20) flush();
    };

    // Wrap the port's clock import so a running program notices Ctrl-C and its output flows.
    const wrap = (imports) => {
        for (const ns of Object.values(imports || {})) {
            for (const [k, f] of Object.entries(ns)) {
                if (typeof f === "function" && String(f).includes("MP_JS_EPOCH")) {
                    ns[k] = (...a) => {
                        poll();
                        return f(...a);
                    };
                }
            }
        }
    };
    const origInstantiate = WebAssembly.instantiate;
    WebAssembly.instantiate = function (src, imports) {
        wrap(imports);
        return origInstantiate.call(this, src, imports);
    };
    if (WebAssembly.instantiateStreaming) {
        const origStreaming = WebAssembly.instantiateStreaming;
        WebAssembly.instantiateStreaming = function (src, imports) {
            wrap(imports);
            return origStreaming.call(this, src, imports);
        };
    }

    globalThis.vb_reset = () => {
        hardReset = true;
    };
    globalThis.vb_reset_cause = () => resetCause;
    globalThis.vb_pin_level = (pin) => {
        try {
            const levels = JSON.parse(fs.readFileSync(path.join(state, "pins.json"), "utf8"));
            return String(pin) in levels ? (levels[String(pin)] ? 1 : 0) : 1;
        } catch {
            return 1;
        }
    };

    // --- the flash: DIR <-> the interpreter's /flash (MEMFS) --------------------------------
    const walkFs = (FS, dir, rel, files, dirs) => {
        for (const name of FS.readdir(dir)) {
            if (name === "." || name === "..") continue;
            const p = dir + "/" + name;
            const r = rel ? rel + "/" + name : name;
            if (FS.isDir(FS.stat(p).mode)) {
                dirs.add(r);
                walkFs(FS, p, r, files, dirs);
            } else files.set(r, Buffer.from(FS.readFile(p)));
        }
    };
    const walkHost = (dir, rel, files, dirs) => {
        for (const ent of fs.readdirSync(dir, { withFileTypes: true })) {
            const r = rel ? rel + "/" + ent.name : ent.name;
            if (ent.isDirectory()) {
                dirs.push(r);
                walkHost(path.join(dir, ent.name), r, files, dirs);
            } else files.set(r, fs.readFileSync(path.join(dir, ent.name)));
        }
    };
    const persist = () => {
        if (!mp) return;
        const files = new Map();
        const dirs = new Set();
        walkFs(mp.FS, "/flash", "", files, dirs);
        for (const d of dirs) fs.mkdirSync(path.join(flash, d), { recursive: true });
        for (const [r, data] of files) {
            const old = persisted.get(r);
            if (!old || !old.equals(data)) fs.writeFileSync(path.join(flash, r), data);
        }
        const hostFiles = new Map();
        const hostDirs = [];
        walkHost(flash, "", hostFiles, hostDirs);
        for (const r of hostFiles.keys()) if (!files.has(r)) fs.rmSync(path.join(flash, r));
        for (const d of hostDirs.reverse()) {
            if (!dirs.has(d)) fs.rmSync(path.join(flash, d), { recursive: true, force: true });
        }
        persisted = files;
    };
    const restore = (FS) => {
        const files = new Map();
        const dirs = [];
        walkHost(flash, "", files, dirs);
        FS.mkdir("/flash");
        for (const d of dirs) FS.mkdir("/flash/" + d);
        for (const [r, data] of files) FS.writeFile("/flash/" + r, data);
        persisted = files;
    };

    const runFile = (name) => {
        mp.runPython(`
try:
    import os as _os
    _os.stat(${JSON.stringify(name)})
    del _os
except OSError:
    pass
else:
    try:
        exec(compile(open(${JSON.stringify(name)}).read(), ${JSON.stringify(name)}, "exec"))
    except SystemExit:
        pass
    except BaseException as _e:
        import sys as _sys
        _sys.print_exception(_e)
`);
    };

    const boot = async (kind) => {
        persist();
        mp = null;
        resetCause = { power: 1, hard: 2, soft: 5 }[kind];
        if (kind === "soft") emit("MPY: soft reboot\r\n");
        else {
            mode = "friendly";
            emit(`\r\nvirtual ESP32 board (MicroPython WebAssembly): ${kind === "power" ? "power on" : "hard reset"}\r\n`);
        }
        for (;;) {
            hardReset = false;
            const inst = await loadMicroPython({
                stdout: (b) => {
                    if (muted) return;
                    for (const c of b) {
                        if (dropOk > 0) {
                            dropOk--;
                            continue;
                        }
                        out.push(c);
                    }
                    if (out.length >= 512) flush();
                },
                linebuffer: false,
                heapsize: 2 * 1024 * 1024,
            });
            restore(inst.FS);
            inst.FS.mkdir("/vb");
            inst.FS.writeFile("/vb/machine.py", machineSrc);
            inst.FS.writeFile("/vb/_vbfs.py", vbfsSrc);
            mp = inst;
            mp.runPython(`
import vfs, sys
vfs.mount(vfs.VfsPosix("/vb"), "/vb")
sys.path.append("/vb")
import machine, _vbfs
sys.path.remove("/vb")
vfs.umount("/vb")
vfs.umount("/")
vfs.mount(_vbfs.Flash("/flash"), "/")
import os
os.chdir("/")
if not hasattr(os, "urandom"):  # an ESP32 has it (hardware RNG); this port does not
    import random
    os.urandom = lambda n, _r=random.getrandbits: bytes([_r(8) for _ in range(n)])
    del random
import binascii  # this port's is Python and takes bytes only; an ESP32's C one takes str too
for _n in ("a2b_base64", "unhexlify"):
    _f = getattr(binascii, _n)
    setattr(binascii, _n, lambda s, _f=_f: _f(s.encode() if isinstance(s, str) else s))
del vfs, sys, os, machine, _vbfs, binascii, _n, _f
`);
            runFile("boot.py");
            if (!hardReset && mode === "friendly") runFile("main.py");
            flush();
            if (!hardReset) break;
            persist();
            mode = "friendly";
            resetCause = 2;
            emit("\r\nvirtual ESP32 board (MicroPython WebAssembly): hard reset\r\n");
        }
        muted = mode === "raw";
        mp.replInit();
        muted = false;
        if (mode === "raw") mp.replProcessChar(1);
        flush();
    };

    await boot("power");
    let dirty = false;
    for (;;) {
        if (Atomics.load(ctrl, STOP)) break;
        let b = readByte(0);
        if (b === null) {
            flush();
            b = readByte(200);
            if (b === null) {
                if (dirty) persist();
                dirty = false;
                continue;
            }
        }
        dirty = true;
        if (mode === "raw" && b === 5) {
            // Raw-paste mode (Ctrl-E "A" Ctrl-A), done here: this port's stdin is a stub
            // that always reads 0, so its own raw-paste would read NULs forever. Same
            // protocol as a board: "R\x01" and a window size, a Ctrl-A per window consumed,
            // Ctrl-D ends the data and is echoed; then the code runs as a raw REPL command
            // (whose "OK" a raw-paste client does not expect, so it is dropped).
            const a = readByte(200);
            const c = a === 65 ? readByte(200) : null;
            if (a !== 65 || c !== 1) {
                for (const x of [b, a, c]) if (x !== null) mp.replProcessChar(x);
                continue;
            }
            const WINDOW = 4096;
            emit("R\x01" + String.fromCharCode(WINDOW & 0xff, WINDOW >> 8));
            const code = [];
            let used = 0;
            let aborted = false;
            for (;;) {
                const x = readByte(1000);
                if (x === null) {
                    if (Atomics.load(ctrl, STOP)) break;
                    continue;
                }
                if (x === 4) break;
                if (x === 3) {
                    aborted = true;
                    break;
                }
                code.push(x);
                if (++used === WINDOW) {
                    used = 0;
                    emit("\x01");
                }
            }
            emit("\x04");
            if (aborted) {
                mp.replProcessChar(1);
                continue;
            }
            dropOk = 2;
            for (const x of code) mp.replProcessChar(x);
            const ret = mp.replProcessChar(4);
            dropOk = 0;
            if (hardReset) {
                flush();
                rd = Atomics.load(ctrl, WRITE);
                Atomics.store(ctrl, READ, rd);
                await boot("hard");
            } else if (ret & 0x100) {
                flush();
                await boot("soft");
            }
            continue;
        }
        if (mode === "friendly" && b === 1) mode = "raw";
        else if (mode === "raw" && b === 2) mode = "friendly";
        if (DEBUG) debug(`char ${b}`);
        const ret = mp.replProcessChar(b);
        if (DEBUG) debug(`ret ${ret}`);
        if (hardReset) {
            flush();
            rd = Atomics.load(ctrl, WRITE); // a reset drops what was on its way in
            Atomics.store(ctrl, READ, rd);
            await boot("hard");
        } else if (ret & 0x100) {
            flush();
            await boot("soft");
        }
    }
    persist();
    parentPort.postMessage({ type: "stopped" });
}
