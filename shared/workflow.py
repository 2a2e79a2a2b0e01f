"""Workflow definitions: validate authoring JSON and compile it to the device form.

Authoring time only (the cloud and the tests, on CPython and MicroPython); boards load
the compiled form with ``shared.program.Program``. Limits and ranges are the constants
of ``shared.compact`` (MAX_*, S16_MAX, VAR_MAX, DURATION_MAX, PERIOD_MIN, MAX_VERSION).

A definition is a dict, or its JSON text as str or bytes (at most MAX_SOURCE bytes):

    name, version (1..MAX_VERSION), initial, states        required
    description, inputs, outputs, vars, timers, events, migrate       optional
    inputs[]   {name, channel, period_ms (>= PERIOD_MIN), filters?: [filterspec spec]}
    outputs[], timers[], events[]: names;  vars[]: {name, init? (0)}
    states[]   {name, entry?: [action], exit?: [action], on?: [transition], final?: bool}
    transition {when: trigger, target?: state (omitted: internal), guard?, actions?}
    trigger    {above|below: input, level, for_ms?} | {crosses: input, level,
               direction: up|down|any} | {timer: t} | {command: c} | {boot: true} |
               {link: up|down}
    guard      one comparison or a list (ANDed) of
               {input|var: name, op: < <= > >= == !=, value: operand}
    operand    int | {input: name} | {var: name}
    action     {set_output: o, value} | {start_timer: t, ms} | {cancel_timer: t} |
               {set_var: v, value} | {add_var: v, value} | {publish: e, value?} |
               {set_period: input, ms}
    migrate    {"<earlier version>": {old state name: new state name}}

Ranges: levels, input comparisons and output values S16; var values +-VAR_MAX; durations
1..DURATION_MAX ms. Commands are declared by use. Names: 1..MAX_NAME chars of [a-z0-9_]
starting with a letter.
"""

import json
import struct
import sys
from array import array

from shared import filterspec
from shared.compact import (
    ACT_ADD_VAR,
    ACT_CANCEL_TIMER,
    ACT_PUBLISH,
    ACT_SET_OUTPUT,
    ACT_SET_PERIOD,
    ACT_SET_VAR,
    ACT_START_TIMER,
    C_ABOVE,
    C_ANY,
    C_BELOW,
    C_DOWN,
    C_UP,
    DURATION_MAX,
    EV_BOOT,
    EV_COMMAND,
    EV_LINK_DOWN,
    EV_LINK_UP,
    EV_SAMPLE,
    EV_TIMER,
    F_FINAL,
    FORMAT,
    MAGIC,
    MAX_ACTIONS,
    MAX_BLOB,
    MAX_COMMANDS,
    MAX_EVENTS,
    MAX_FILTERS,
    MAX_GUARD_TERMS,
    MAX_INPUTS,
    MAX_MIGRATE_ENTRIES,
    MAX_MIGRATE_VERSIONS,
    MAX_NAME,
    MAX_OUTPUTS,
    MAX_SOURCE,
    MAX_STATES,
    MAX_TIMERS,
    MAX_TRANSITIONS,
    MAX_VARS,
    MAX_VERSION,
    O_CONST,
    O_INPUT,
    O_NONE,
    O_VAR,
    OPS,
    PERIOD_MIN,
    S16_MAX,
    VAR_MAX,
    is_name,
)
from shared.program import Program

MAX_DESCRIPTION = 512  # chars

TRIGGERS = ("above", "below", "crosses", "timer", "command", "boot", "link")
ACTIONS = (
    "set_output",
    "start_timer",
    "cancel_timer",
    "set_var",
    "add_var",
    "publish",
    "set_period",
)
# (required, optional) keys of each trigger and action kind.
_TRIGGER_KEYS = {
    "above": (("above", "level"), ("for_ms",)),
    "below": (("below", "level"), ("for_ms",)),
    "crosses": (("crosses", "level", "direction"), ()),
    "timer": (("timer",), ()),
    "command": (("command",), ()),
    "boot": (("boot",), ()),
    "link": (("link",), ()),
}
_ACTION_KEYS = {
    "set_output": (("set_output", "value"), ()),
    "start_timer": (("start_timer", "ms"), ()),
    "cancel_timer": (("cancel_timer",), ()),
    "set_var": (("set_var", "value"), ()),
    "add_var": (("add_var", "value"), ()),
    "publish": (("publish",), ("value",)),
    "set_period": (("set_period", "ms"), ()),
}
_ACTION_CODES = {
    "set_output": ACT_SET_OUTPUT,
    "start_timer": ACT_START_TIMER,
    "cancel_timer": ACT_CANCEL_TIMER,
    "set_var": ACT_SET_VAR,
    "add_var": ACT_ADD_VAR,
    "publish": ACT_PUBLISH,
    "set_period": ACT_SET_PERIOD,
}
_DIRECTIONS = {"up": C_UP, "down": C_DOWN, "any": C_ANY}
_S16 = "the S16 range"
_VARS = "the var range"
_MS = "the duration range (ms)"
_NAME_RULE = "names are 1-%d characters of a-z, 0-9 and _, starting with a letter" % MAX_NAME


class WorkflowError(ValueError):
    """A definition that is not valid: ``errors`` lists every ``(path, reason)``;
    ``path`` and ``reason`` are the first's."""

    def __init__(self, errors):
        self.errors = errors
        self.path = errors[0][0]
        self.reason = errors[0][1]
        super().__init__("; ".join([p + ": " + r for p, r in errors]))

    def __str__(self):
        return "; ".join([p + ": " + r for p, r in self.errors])


class Compiled:
    """A compiled workflow: ``blob`` (device form), ``hash`` (hex sha256 of blob),
    ``heap_bytes`` (upper bound of the device heap its Program, Executor and filter
    chains hold on MicroPython), ``name``, ``version``."""

    def __init__(self, blob, name, version, heap_bytes, hash_hex):
        self.blob = blob
        self.hash = hash_hex
        self.heap_bytes = heap_bytes
        self.name = name
        self.version = version


def _ascii_digits(s):
    # str.isdigit() also accepts digits int() refuses, such as "²"
    for c in s:
        if c < "0" or c > "9":
            return False
    return True


def errors(defn, profile=None):
    """Every problem of ``defn`` (dict, or JSON str/bytes) as a list of (path, reason);
    empty if it is valid (for ``profile``'s channels and outputs, when given)."""
    c = _Checker(profile)
    c.check(defn)
    return c.errs


def validate(defn, profile=None):
    """Raise WorkflowError listing every problem of ``defn``; return None if valid."""
    errs = errors(defn, profile)
    if errs:
        raise WorkflowError(errs)


def compile(defn, profile=None):
    """Validate ``defn`` and compile it; returns a Compiled. Raises WorkflowError."""
    c = _Checker(profile)
    c.check(defn)
    if c.errs:
        raise WorkflowError(c.errs)
    prog = Program(c.blob)
    return Compiled(c.blob, prog.name, prog.version, heap_bytes(prog), prog.hash)


# Heap model of MicroPython's 32-bit ports: 16-byte GC blocks; an instance is one block
# plus its attribute table (8 bytes per slot, slots as below); a str or bytes a 16-byte
# header plus its data and NUL; an array a header plus its items; a tuple one block.
_SLOTS = (0, 2, 4, 6, 8, 10, 12, 17, 23, 29, 37, 47, 59, 73)


def _blocks(n):
    return (n + 15) // 16 * 16


def _heap(x):
    if isinstance(x, (str, bytes)):
        return 16 + _blocks(len(x) + 1)
    if isinstance(x, array):
        return 16 + _blocks(4 * len(x))
    if isinstance(x, tuple):
        n = _blocks(8 + 4 * len(x)) if x else 0
        for v in x:
            n += _heap(v)
        return n
    return 0


def _instance(obj, skip):
    d = obj.__dict__
    slots = 0
    for s in _SLOTS:
        slots = s
        if s >= len(d):
            break
    n = 16 + _blocks(8 * slots)
    for k in d:
        v = d[k]
        shared = False
        for s in skip:
            shared = shared or v is s
        if not shared:
            n += _heap(v)
    return n


def heap_bytes(prog):
    """Upper bound of the MicroPython heap held by ``prog`` plus an Executor running it
    (with its filter chains); interned names make the real figure a little lower."""
    from shared.executor import Executor

    ex = Executor(prog, None, None)
    n = _instance(prog, ()) + _instance(ex, list(prog.__dict__.values()))
    for i in range(len(prog.input_names)):
        n += filterspec.chain_footprint(prog.filters(i))
    return n


# Validation.


def _kind(x):
    if x is None:
        return "null"
    if x is True or x is False:
        return "boolean"
    if isinstance(x, int):
        return "integer"
    if isinstance(x, float):
        return "number"
    if isinstance(x, str):
        return "string"
    if isinstance(x, (list, tuple)):
        return "array"
    if isinstance(x, dict):
        return "object"
    return type(x).__name__


def _is_int(x):
    return isinstance(x, int) and x is not True and x is not False


def _q(x):
    # A user-supplied value for a message, kept short.
    s = repr(x) if isinstance(x, str) else str(x)
    return s if len(s) <= 40 else s[:37] + "..."


def _at(path, key):
    return key if path == "$" else path + "." + key


def _distance(a, b):
    # Levenshtein distance of two short strings.
    prev = list(range(len(b) + 1))
    for i in range(len(a)):
        cur = [i + 1]
        for j in range(len(b)):
            cur.append(min(prev[j + 1] + 1, cur[j] + 1, prev[j] + (a[i] != b[j])))
        prev = cur
    return prev[-1]


def _hint(key, allowed):
    if isinstance(key, str) and len(key) <= 40:
        for k in allowed:
            if _distance(key, k) <= 2:
                return " (did you mean %r?)" % k
    return ""


class _DupDict(dict):
    # A JSON object that had duplicate keys (CPython only: MicroPython's json keeps the
    # last silently). ``dups`` lists them.
    dups = ()


def _pairs(pairs):
    d = {}
    dups = []
    for k, v in pairs:
        if k in d:
            dups.append(k)
        d[k] = v
    if dups:
        d = _DupDict(d)
        d.dups = dups
    return d


def _parse(defn):
    # (dict-or-other, error or None) for a definition given as JSON text.
    if isinstance(defn, (bytes, bytearray)):
        if len(defn) > MAX_SOURCE:
            return None, "source is %d bytes, over the %d-byte limit" % (len(defn), MAX_SOURCE)
        try:
            defn = bytes(defn).decode("utf-8")
        except Exception:  # noqa: BLE001 - UnicodeError on CPython, ValueError-ish on MP
            return None, "source is not UTF-8 text"
    else:
        try:
            n = len(defn.encode("utf-8"))
        except Exception:  # noqa: BLE001 - lone surrogates
            return None, "source is not UTF-8 text"
        if n > MAX_SOURCE:
            return None, "source is %d bytes, over the %d-byte limit" % (n, MAX_SOURCE)
    try:
        if sys.implementation.name == "micropython":
            return json.loads(defn), None
        return json.loads(defn, object_pairs_hook=_pairs), None
    except Exception as e:  # noqa: BLE001 - any parse failure is the source's fault
        return None, "not valid JSON: %s" % (str(e)[:100],)


class _Checker:
    """One pass over a definition: collects errors and encodes the device records."""

    def __init__(self, profile):
        self.errs = []
        self.profile = profile
        self.blob = None
        self.strings = []
        self.states = {}
        self.inputs = {}
        self.outputs = {}
        self.vars = {}
        self.timers = {}
        self.events = {}
        self.commands = {}
        self.channels = []
        self.periods = []
        self.var_init = []
        self.filters = []  # per input: list of (code, params)
        self.st = []
        self.tr = []
        self.gd = []
        self.ac = []
        self.mig = []  # (old version, [(old name, new index)])
        self.edges = []
        self.unresolved = False  # a target did not resolve: reachability would be noise
        self.version = None

    def err(self, path, reason):
        self.errs.append((path, reason))

    # Generic checks; each returns the checked value or None after recording an error.

    def obj(self, path, x, required, optional):
        if not isinstance(x, dict):
            self.err(path, "expected an object, got " + _kind(x))
            return False
        for k in getattr(x, "dups", ()):
            self.err(_at(path, k), "duplicate key %r" % k)
        for k in required:
            if k not in x:
                self.err(_at(path, k), "missing required key")
        extra = []
        for k in x:
            if k not in required and k not in optional:
                extra.append(k)
        extra.sort(key=str)
        for k in extra:
            self.err(_at(path, str(k)), "unknown key %s%s" % (_q(k), _hint(k, required + optional)))
        return True

    def integer(self, path, x, lo, hi, what):
        if not _is_int(x):
            self.err(path, "expected an integer, got " + _kind(x))
            return None
        if x < lo or x > hi:
            n = str(x) if -(10**15) < x < 10**15 else "a huge integer"
            self.err(path, "%s is outside %s [%d, %d]" % (n, what, lo, hi))
            return None
        return x

    def items(self, path, x, most, what):
        if not isinstance(x, list):
            self.err(path, "expected an array, got " + _kind(x))
            return []
        if len(x) > most:
            self.err(path, "%d %s, over the limit of %d" % (len(x), what, most))
        return x

    def name(self, path, x):
        if not isinstance(x, str):
            self.err(path, "expected a name (string), got " + _kind(x))
            return None
        if not is_name(x):
            self.err(path, "invalid name %s: %s" % (_q(x), _NAME_RULE))
            return None
        return x

    def declare(self, path, x, table, kind, seen):
        # Add name x to table (name -> index); refuse duplicates. seen: name -> path.
        n = self.name(path, x)
        if n is None:
            return None
        if n in table:
            self.err(path, "duplicate %s name %r (first at %s)" % (kind, n, seen[n]))
            return None
        seen[n] = path
        table[n] = len(table)
        return n

    def ref(self, path, x, table, kind):
        if not isinstance(x, str):
            self.err(path, "expected a %s name (string), got %s" % (kind, _kind(x)))
            return None
        if x not in table:
            names = sorted(table)
            known = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            self.err(
                path,
                "unknown %s %s (%s)"
                % (kind, _q(x), "declared: " + known if names else "none declared"),
            )
            return None
        return table[x]

    def names(self, path, x, table, kind, most):
        seen = {}
        names = self.items(path, x, most, kind + "s")
        for i in range(len(names)):
            n = names[i]
            self.declare("%s[%d]" % (path, i), n, table, kind, seen)

    # The definition.

    def check(self, defn):
        if isinstance(defn, (str, bytes, bytearray)):
            defn, problem = _parse(defn)
            if problem:
                self.err("$", problem)
                return
        d = defn
        if not self.obj(
            "$",
            d,
            ("name", "version", "initial", "states"),
            ("description", "inputs", "outputs", "vars", "timers", "events", "migrate"),
        ):
            return
        self.check_profile()
        self.name("name", d.get("name", "x"))
        self.version = self.integer(
            "version", d.get("version", 1), 1, MAX_VERSION, "the version range"
        )
        desc = d.get("description", "")
        if not isinstance(desc, str):
            self.err("description", "expected a string, got " + _kind(desc))
        elif len(desc) > MAX_DESCRIPTION:
            self.err(
                "description", "%d characters, over the limit of %d" % (len(desc), MAX_DESCRIPTION)
            )
        seen = {}
        inputs = self.items("inputs", d.get("inputs", []), MAX_INPUTS, "inputs")
        for i in range(len(inputs)):
            x = inputs[i]
            self.check_input("inputs[%d]" % i, x, seen)
        self.names("outputs", d.get("outputs", []), self.outputs, "output", MAX_OUTPUTS)
        if self.board_outputs is not None:
            outs = d.get("outputs", [])
            outs = outs if isinstance(outs, list) else []
            for i in range(len(outs)):
                o = outs[i]
                if isinstance(o, str) and o in self.outputs and o not in self.board_outputs:
                    self.err(
                        "outputs[%d]" % i,
                        "board %s has no output %r (outputs: %s)"
                        % (self.board, o, ", ".join(sorted(self.board_outputs))),
                    )
        seen = {}
        vs = self.items("vars", d.get("vars", []), MAX_VARS, "vars")
        for i in range(len(vs)):
            x = vs[i]
            p = "vars[%d]" % i
            if self.obj(p, x, ("name",), ("init",)) and "name" in x:
                self.declare(p + ".name", x["name"], self.vars, "var", seen)
                v = self.integer(p + ".init", x.get("init", 0), -VAR_MAX, VAR_MAX, _VARS)
                self.var_init.append(v or 0)
        self.names("timers", d.get("timers", []), self.timers, "timer", MAX_TIMERS)
        self.names("events", d.get("events", []), self.events, "event", MAX_EVENTS)
        self.check_states(d)
        self.check_migrate(d.get("migrate", {}))
        if not self.errs:
            self.encode(d)

    def check_profile(self):
        self.board_channels = self.board_outputs = None
        p = self.profile
        if p is None:
            return
        if not isinstance(p, dict):
            self.err("profile", "expected an object, got " + _kind(p))
            return
        self.board = _q(p["name"]) if "name" in p else "(unnamed)"
        for key in ("channels", "outputs"):
            v = p.get(key)
            if not isinstance(v, (dict, list)):
                self.err("profile." + key, "expected an object or array, got " + _kind(v))
                continue
            names = [n for n in v if isinstance(n, str)]
            if key == "channels":
                self.board_channels = names
            else:
                self.board_outputs = names

    def check_input(self, p, x, seen):
        if not self.obj(p, x, ("name", "channel", "period_ms"), ("filters",)):
            return
        if "name" in x:
            self.declare(p + ".name", x["name"], self.inputs, "input", seen)
        ch = self.name(p + ".channel", x["channel"]) if "channel" in x else None
        if ch is not None and self.board_channels is not None and ch not in self.board_channels:
            self.err(
                p + ".channel",
                "board %s has no channel %r (channels: %s)"
                % (self.board, ch, ", ".join(sorted(self.board_channels))),
            )
        period = None
        if "period_ms" in x:
            period = self.integer(p + ".period_ms", x["period_ms"], PERIOD_MIN, DURATION_MAX, _MS)
        self.channels.append(ch or "x")
        self.periods.append(period or PERIOD_MIN)
        chain = []
        self.filters.append(chain)
        fs = self.items(p + ".filters", x.get("filters", []), MAX_FILTERS, "filters")
        for j in range(len(fs)):
            spec = fs[j]
            fp = "%s.filters[%d]" % (p, j)
            if not isinstance(spec, dict):
                self.err(fp, "expected an object, got " + _kind(spec))
            elif period is not None:
                self.check_filter(fp, spec, period, chain)

    def check_filter(self, fp, spec, period, chain):
        try:
            chain.append(filterspec.compile_spec(spec, period))
            return
        except ValueError as e:
            msg = str(e)
        except Exception as e:  # noqa: BLE001 - a filterspec bug must not escape validate
            msg = "filter spec refused (%s: %s)" % (type(e).__name__, e)
        cut = msg.find(": ")
        if cut > 0 and _is_field(msg[:cut]):
            self.err(fp + "." + msg[:cut], msg[cut + 2 :])
        else:
            self.err(fp, msg)

    def check_states(self, d):
        states = self.items("states", d.get("states", []), MAX_STATES, "states")
        if isinstance(d.get("states"), list) and not states:
            self.err("states", "a workflow needs at least one state")
        seen = {}
        for i in range(len(states)):
            s = states[i]
            self.edges.append([])
            if isinstance(s, dict) and "name" in s:
                # Declared first so that targets may refer to later states.
                self.declare("states[%d].name" % i, s.get("name"), self.states, "state", seen)
        initial = None
        if "initial" in d:
            initial = self.ref("initial", d["initial"], self.states, "state")
        for i in range(len(states)):
            s = states[i]
            self.check_state(i, s)
        if initial is None or len(self.states) != len(states) or self.unresolved:
            return
        reached = [initial]
        for s in reached:
            for t in self.edges[s]:
                if t not in reached:
                    reached.append(t)
        for i in range(len(states)):
            s = states[i]
            if i not in reached:
                self.err(
                    "states[%d]" % i,
                    "state %r is unreachable from the initial state %r" % (s["name"], d["initial"]),
                )

    def check_state(self, i, s):
        p = "states[%d]" % i
        rec = [0, 0, 0, 0, 0, 0, 0]
        self.st.append(rec)
        if not self.obj(p, s, ("name",), ("entry", "exit", "on", "final")):
            return
        final = s.get("final", False)
        if final is not True and final is not False:
            self.err(p + ".final", "expected true or false, got " + _kind(final))
        rec[6] = F_FINAL if final is True else 0
        rec[2] = len(self.ac)
        entry = self.items(p + ".entry", s.get("entry", []), MAX_ACTIONS, "actions")
        for j in range(len(entry)):
            a = entry[j]
            self.check_action("%s.entry[%d]" % (p, j), a)
        rec[3] = rec[4] = len(self.ac)
        exits = self.items(p + ".exit", s.get("exit", []), MAX_ACTIONS, "actions")
        if final is True and exits:
            self.err(p + ".exit", "a final state is never left, so exit actions never run")
        for j in range(len(exits)):
            a = exits[j]
            self.check_action("%s.exit[%d]" % (p, j), a)
        rec[5] = len(self.ac)
        rec[0] = len(self.tr)
        on = self.items(p + ".on", s.get("on", []), MAX_TRANSITIONS, "transitions")
        if final is True and on:
            self.err(p + ".on", "a final state has no transitions")
        way_out = False
        for j in range(len(on)):
            t = on[j]
            tp = "%s.on[%d]" % (p, j)
            target = self.check_transition(tp, t, i)
            if isinstance(t, dict) and "target" in t and t["target"] != s.get("name"):
                way_out = True
            if target is not None:
                self.edges[i].append(target)
        rec[1] = len(self.tr)
        if final is not True and not way_out:
            self.err(
                p,
                "state %s is not final and has no transition to another state "
                "(no way out)" % _q(s.get("name")),
            )

    def check_transition(self, p, t, state):
        rec = [0] * 10
        if len(self.tr) == MAX_TRANSITIONS:
            self.err(
                p,
                "transition %d is over the limit of %d per workflow"
                % (MAX_TRANSITIONS + 1, MAX_TRANSITIONS),
            )
        self.tr.append(rec)
        if not self.obj(p, t, ("when",), ("target", "guard", "actions")):
            return None
        if "when" in t:
            self.check_trigger(p + ".when", t["when"], rec)
        target = -1
        if "target" in t:
            target = self.ref(p + ".target", t["target"], self.states, "state")
            self.unresolved = self.unresolved or target is None
        rec[9] = -1 if target is None else target
        rec[5] = len(self.gd)
        if "guard" in t:
            g = t["guard"]
            if isinstance(g, list):
                terms = self.items(p + ".guard", g, MAX_GUARD_TERMS, "comparisons")
                for k in range(len(terms)):
                    c = terms[k]
                    self.check_comparison("%s.guard[%d]" % (p, k), c)
            else:
                self.check_comparison(p + ".guard", g)
        rec[6] = len(self.gd)
        rec[7] = len(self.ac)
        acts = self.items(p + ".actions", t.get("actions", []), MAX_ACTIONS, "actions")
        for k in range(len(acts)):
            a = acts[k]
            self.check_action("%s.actions[%d]" % (p, k), a)
        rec[8] = len(self.ac)
        return None if target is None or target < 0 else target

    def one_of(self, p, x, kinds, what):
        # The one key of x that is in kinds, or None after an error.
        one = None
        for k in kinds:
            if k in x:
                if one is not None:
                    one = ""
                    break
                one = k
        if one:
            return one
        found = [k for k in kinds if k in x]
        if found:
            self.err(p, "more than one %s: %s" % (what, ", ".join(found)))
        else:
            self.err(p, "no %s: expected one of %s" % (what, ", ".join(kinds)))
        return None

    def check_trigger(self, p, w, rec):
        if not isinstance(w, dict):
            self.err(p, "expected an object, got " + _kind(w))
            return
        kind = self.one_of(p, w, TRIGGERS, "trigger")
        if kind is None:
            return
        req, opt = _TRIGGER_KEYS[kind]  # req includes the kind's own key
        if kind == "crosses" and "for_ms" in w:
            self.err(
                p + ".for_ms", "crosses fires on one sample; for_ms applies to above and below only"
            )
            w = dict(w)
            del w["for_ms"]
        self.obj(p, w, req, opt)
        v = w.get(kind)
        kp = p + "." + kind
        if kind in ("above", "below", "crosses"):
            rec[0] = EV_SAMPLE
            rec[1] = self.ref(kp, v, self.inputs, "input") or 0
            rec[3] = self.integer(p + ".level", w.get("level", 0), -S16_MAX, S16_MAX, _S16) or 0
            if kind == "crosses":
                d = w.get("direction", "any")
                if not isinstance(d, str) or d not in _DIRECTIONS:
                    self.err(p + ".direction", "expected 'up', 'down' or 'any', got " + _q(d))
                rec[2] = _DIRECTIONS.get(d, C_ANY) if isinstance(d, str) else C_ANY
            else:
                rec[2] = C_ABOVE if kind == "above" else C_BELOW
                if "for_ms" in w:
                    rec[4] = self.integer(p + ".for_ms", w["for_ms"], 1, DURATION_MAX, _MS) or 0
        elif kind == "timer":
            rec[0] = EV_TIMER
            rec[1] = self.ref(kp, v, self.timers, "timer") or 0
        elif kind == "command":
            rec[0] = EV_COMMAND
            if self.name(kp, v) is not None:
                if v not in self.commands:
                    if len(self.commands) == MAX_COMMANDS:
                        self.err(
                            kp,
                            "command %d is over the limit of %d" % (MAX_COMMANDS + 1, MAX_COMMANDS),
                        )
                    self.commands[v] = len(self.commands)
                rec[1] = self.commands[v]
        elif kind == "boot":
            rec[0] = EV_BOOT
            if v is not True:
                self.err(kp, "expected true, got " + _kind(v))
        else:
            rec[0] = EV_LINK_UP if v == "up" else EV_LINK_DOWN
            if not isinstance(v, str) or v not in ("up", "down"):
                self.err(
                    kp,
                    "expected 'up' or 'down', got " + (_q(v) if isinstance(v, str) else _kind(v)),
                )

    def check_comparison(self, p, c):
        rec = [O_INPUT, 0, 0, O_CONST, 0]
        self.gd.append(rec)
        if not self.obj(p, c, ("op", "value"), ("input", "var")):
            return
        side = self.one_of(p, c, ("input", "var"), "left-hand side (input or var)")
        if side == "input":
            rec[1] = self.ref(p + ".input", c["input"], self.inputs, "input") or 0
        elif side == "var":
            rec[0] = O_VAR
            rec[1] = self.ref(p + ".var", c["var"], self.vars, "var") or 0
        op = c.get("op", "<")
        if op in OPS and isinstance(op, str):
            rec[2] = OPS.index(op)
        else:
            self.err(
                p + ".op",
                "expected one of %s, got %s"
                % (" ".join(OPS), _q(op) if isinstance(op, str) else _kind(op)),
            )
        if side == "input":
            rec[3], rec[4] = self.operand(p + ".value", c.get("value", 0), S16_MAX, _S16)
        else:
            rec[3], rec[4] = self.operand(p + ".value", c.get("value", 0), VAR_MAX, _VARS)

    def operand(self, p, x, most, what):
        if isinstance(x, dict):
            if not self.obj(p, x, (), ("input", "var")):
                return O_CONST, 0
            side = self.one_of(p, x, ("input", "var"), "operand (input or var)")
            if side == "input":
                return O_INPUT, self.ref(p + ".input", x["input"], self.inputs, "input") or 0
            if side == "var":
                return O_VAR, self.ref(p + ".var", x["var"], self.vars, "var") or 0
            return O_CONST, 0
        if _is_int(x):
            return O_CONST, self.integer(p, x, -most, most, what) or 0
        self.err(p, 'expected an integer, {"input": name} or {"var": name}, got ' + _kind(x))
        return O_CONST, 0

    def check_action(self, p, a):
        rec = [ACT_SET_OUTPUT, 0, O_NONE, 0]
        if len(self.ac) == MAX_ACTIONS:
            self.err(
                p, "action %d is over the limit of %d per workflow" % (MAX_ACTIONS + 1, MAX_ACTIONS)
            )
        self.ac.append(rec)
        if not isinstance(a, dict):
            self.err(p, "expected an object, got " + _kind(a))
            return
        kind = self.one_of(p, a, ACTIONS, "action")
        if kind is None:
            return
        req, opt = _ACTION_KEYS[kind]  # req includes the kind's own key
        self.obj(p, a, req, opt)
        rec[0] = _ACTION_CODES[kind]
        v = a.get(kind)
        kp = p + "." + kind
        if kind == "set_output":
            rec[1] = self.ref(kp, v, self.outputs, "output") or 0
            rec[2], rec[3] = self.operand(p + ".value", a.get("value", 0), S16_MAX, _S16)
        elif kind in ("start_timer", "cancel_timer"):
            rec[1] = self.ref(kp, v, self.timers, "timer") or 0
            if kind == "start_timer":
                rec[2] = O_CONST
                rec[3] = self.integer(p + ".ms", a.get("ms", 1), 1, DURATION_MAX, _MS) or 1
        elif kind in ("set_var", "add_var"):
            rec[1] = self.ref(kp, v, self.vars, "var") or 0
            rec[2], rec[3] = self.operand(p + ".value", a.get("value", 0), VAR_MAX, _VARS)
        elif kind == "publish":
            rec[1] = self.ref(kp, v, self.events, "event") or 0
            if "value" in a:
                rec[2], rec[3] = self.operand(p + ".value", a["value"], VAR_MAX, _VARS)
        else:
            rec[1] = self.ref(kp, v, self.inputs, "input") or 0
            rec[2] = O_CONST
            rec[3] = (
                self.integer(
                    p + ".ms",
                    a.get("ms", PERIOD_MIN),
                    PERIOD_MIN,
                    DURATION_MAX,
                    "the period range (ms)",
                )
                or PERIOD_MIN
            )

    def check_migrate(self, m):
        if not isinstance(m, dict):
            self.err("migrate", "expected an object, got " + _kind(m))
            return
        for k in getattr(m, "dups", ()):
            self.err("migrate." + k, "duplicate key %r" % k)
        if len(m) > MAX_MIGRATE_VERSIONS:
            self.err(
                "migrate", "%d versions, over the limit of %d" % (len(m), MAX_MIGRATE_VERSIONS)
            )
        total = 0
        for key in sorted(m, key=str):
            p = "migrate." + str(key)
            old = None
            if isinstance(key, str) and 0 < len(key) <= 8 and _ascii_digits(key):
                old = int(key)
                if str(old) != key:
                    old = None
            if old is None:
                self.err(p, "key %s is not a version number" % _q(key))
            elif self.version is not None and not 1 <= old < self.version:
                self.err(p, "version %d is not earlier than this version %d" % (old, self.version))
                old = None
            mapping = m[key]
            if not isinstance(mapping, dict):
                self.err(p, "expected an object {old state: new state}, got " + _kind(mapping))
                continue
            for k in getattr(mapping, "dups", ()):
                self.err(p + "." + k, "duplicate key %r" % k)
            if len(mapping) > MAX_STATES:
                self.err(p, "%d entries, over the limit of %d" % (len(mapping), MAX_STATES))
            total += len(mapping)
            entries = []
            for name in sorted(mapping, key=str):
                ep = p + "." + str(name)
                ok = self.name(ep, name) is not None
                new = self.ref(ep, mapping[name], self.states, "state")
                if ok and new is not None:
                    entries.append((name, new))
            if old is not None:
                self.mig.append((old, entries))
        if total > MAX_MIGRATE_ENTRIES:
            self.err("migrate", "%d entries, over the limit of %d" % (total, MAX_MIGRATE_ENTRIES))
        self.mig.sort(key=lambda e: e[0])

    # Encoding (only once the definition is valid).

    def encode(self, d):
        words = []
        for recs in (self.st, self.tr, self.gd, self.ac):
            for r in recs:
                words.extend(r)
        params = []
        fcount = 0
        for i in range(len(self.filters)):
            words.extend((self.periods[i], fcount, fcount + len(self.filters[i])))
            fcount += len(self.filters[i])
        for chain in self.filters:
            for code, ps in chain:
                words.extend((code, len(params), len(params) + len(ps)))
                params.extend(ps)
        words.extend(params)
        words.extend(self.var_init)
        mig_names = []
        targets = []
        for old, entries in self.mig:
            words.extend((old, len(targets), len(targets) + len(entries)))
            for name, new in entries:
                mig_names.append(name)
                targets.append(new)
        words.extend(targets)
        strs = [d["name"]]
        for table in (self.states, self.inputs):
            strs.extend(_ordered(table))
        strs.extend(self.channels)
        for table in (self.outputs, self.vars, self.timers, self.events, self.commands):
            strs.extend(_ordered(table))
        strs.extend(mig_names)
        data = "".join(strs).encode()
        header = (
            FORMAT,
            d["version"],
            self.states[d["initial"]],
            len(self.st),
            len(self.tr),
            len(self.gd),
            len(self.ac),
            len(self.inputs),
            len(self.outputs),
            len(self.vars),
            len(self.timers),
            len(self.events),
            len(self.commands),
            fcount,
            len(params),
            len(self.mig),
            len(targets),
            len(data),
        )
        blob = (
            MAGIC
            + struct.pack("<18i", *header)
            + struct.pack("<%di" % len(words), *words)
            + bytes([len(s) for s in strs])
            + data
        )
        if len(blob) > MAX_BLOB:
            self.err(
                "$", "the compiled form is %d bytes, over the %d-byte limit" % (len(blob), MAX_BLOB)
            )
            return
        self.blob = blob


def _ordered(table):
    # A name -> index dict's names in index order (dict order differs on MicroPython).
    out = [None] * len(table)
    for k in table:
        out[table[k]] = k
    return out


def _is_field(s):
    # "alpha" or "coeffs[3]": a filter spec field named at the start of a filterspec error.
    if not s or not "a" <= s[0] <= "z":
        return False
    for c in s:
        if not ("a" <= c <= "z" or "0" <= c <= "9" or c in "_[]"):
            return False
    return True
