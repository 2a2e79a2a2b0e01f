"""The rules a workflow definition follows (documented in ``shared.workflow.compiler``): one
pass over a definition that records every problem with its path and, for a valid definition,
the records of the device form.
"""

from shared.filters.spec import compile_spec
from shared.workflow import form
from shared.workflow.checks import Checks, is_int, kind_of, parse, quote

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
    "set_output": form.ACT_SET_OUTPUT,
    "start_timer": form.ACT_START_TIMER,
    "cancel_timer": form.ACT_CANCEL_TIMER,
    "set_var": form.ACT_SET_VAR,
    "add_var": form.ACT_ADD_VAR,
    "publish": form.ACT_PUBLISH,
    "set_period": form.ACT_SET_PERIOD,
}
_DIRECTIONS = {"up": form.C_UP, "down": form.C_DOWN, "any": form.C_ANY}
_S16 = "the S16 range"
_VARS = "the var range"
_MS = "the duration range (ms)"


def _ascii_digits(s):
    # str.isdigit() also accepts digits int() refuses, such as "²"
    for c in s:
        if c < "0" or c > "9":
            return False
    return True


class Checker(Checks):
    """One pass over a definition: collects errors and, for a valid one, the device records
    that ``shared.workflow.encode`` lays out (``defn`` is the definition as a dict)."""

    def __init__(self, profile):
        Checks.__init__(self)
        self.defn = None
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

    # The definition.

    def check(self, defn):
        if isinstance(defn, (str, bytes, bytearray)):
            defn, problem = parse(defn)
            if problem:
                self.err("$", problem)
                return
        d = defn
        self.defn = d
        if not self.obj(
            "$",
            d,
            ("name", "version", "initial", "states"),
            ("description", "inputs", "outputs", "vars", "timers", "events", "migrate")
            + ("safe_states", "safe_wait_s"),
        ):
            return
        self.check_profile()
        self.name("name", d.get("name", "x"))
        self.version = self.integer(
            "version", d.get("version", 1), 1, form.MAX_VERSION, "the version range"
        )
        desc = d.get("description", "")
        if not isinstance(desc, str):
            self.err("description", "expected a string, got " + kind_of(desc))
        elif len(desc) > MAX_DESCRIPTION:
            self.err(
                "description", "%d characters, over the limit of %d" % (len(desc), MAX_DESCRIPTION)
            )
        seen = {}
        inputs = self.items("inputs", d.get("inputs", []), form.MAX_INPUTS, "inputs")
        for i in range(len(inputs)):
            x = inputs[i]
            self.check_input("inputs[%d]" % i, x, seen)
        self.names("outputs", d.get("outputs", []), self.outputs, "output", form.MAX_OUTPUTS)
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
        vs = self.items("vars", d.get("vars", []), form.MAX_VARS, "vars")
        for i in range(len(vs)):
            x = vs[i]
            p = "vars[%d]" % i
            if self.obj(p, x, ("name",), ("init",)) and "name" in x:
                self.declare(p + ".name", x["name"], self.vars, "var", seen)
                v = self.integer(p + ".init", x.get("init", 0), -form.VAR_MAX, form.VAR_MAX, _VARS)
                self.var_init.append(v or 0)
        self.names("timers", d.get("timers", []), self.timers, "timer", form.MAX_TIMERS)
        self.names("events", d.get("events", []), self.events, "event", form.MAX_EVENTS)
        self.check_states(d)
        self.check_safe(d)
        self.check_migrate(d.get("migrate", {}))

    def check_profile(self):
        self.board_channels = self.board_outputs = None
        p = self.profile
        if p is None:
            return
        if not isinstance(p, dict):
            self.err("profile", "expected an object, got " + kind_of(p))
            return
        self.board = quote(p["name"]) if "name" in p else "(unnamed)"
        for key in ("channels", "outputs"):
            v = p.get(key)
            if not isinstance(v, (dict, list)):
                self.err("profile." + key, "expected an object or array, got " + kind_of(v))
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
            period = self.integer(
                p + ".period_ms", x["period_ms"], form.PERIOD_MIN, form.DURATION_MAX, _MS
            )
        self.channels.append(ch or "x")
        self.periods.append(period or form.PERIOD_MIN)
        chain = []
        self.filters.append(chain)
        fs = self.items(p + ".filters", x.get("filters", []), form.MAX_FILTERS, "filters")
        for j in range(len(fs)):
            spec = fs[j]
            fp = "%s.filters[%d]" % (p, j)
            if not isinstance(spec, dict):
                self.err(fp, "expected an object, got " + kind_of(spec))
            elif period is not None:
                self.check_filter(fp, spec, period, chain)

    def check_filter(self, fp, spec, period, chain):
        try:
            chain.append(compile_spec(spec, period))
            return
        except ValueError as e:
            msg = str(e)
        except Exception as e:  # noqa: BLE001 - a filter spec bug must not escape validate
            msg = "filter spec refused (%s: %s)" % (type(e).__name__, e)
        cut = msg.find(": ")
        if cut > 0 and _is_field(msg[:cut]):
            self.err(fp + "." + msg[:cut], msg[cut + 2 :])
        else:
            self.err(fp, msg)

    def check_states(self, d):
        states = self.items("states", d.get("states", []), form.MAX_STATES, "states")
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
        if not self.errs:
            self.check_timer_exits(initial)

    def check_safe(self, d):
        # safe_states: the states an install, a bundle switch or a reboot may happen in (the
        # board waits up to safe_wait_s for one); recorded in every state's flags (form).
        if "safe_states" not in d:
            if "safe_wait_s" in d:
                self.err("safe_wait_s", "needs safe_states (the states the board waits for)")
            return
        names = self.items("safe_states", d["safe_states"], form.MAX_STATES, "states")
        if isinstance(d["safe_states"], list) and not names:
            self.err("safe_states", "name at least one state (without it every state is safe)")
        wait = self.integer(
            "safe_wait_s",
            d.get("safe_wait_s", form.SAFE_WAIT_DEFAULT),
            1,
            form.SAFE_WAIT_MAX,
            "the safe wait range (s)",
        )
        safe = []
        for i in range(len(names)):
            s = self.ref("safe_states[%d]" % i, names[i], self.states, "state")
            if s is not None and s in safe:
                self.err("safe_states[%d]" % i, "duplicate state %r" % names[i])
            elif s is not None:
                safe.append(s)
        flags = (wait or 1) << form.SAFE_SHIFT
        for i in range(len(self.st)):
            self.st[i][6] |= flags | (form.F_SAFE if i in safe else 0)

    def check_timer_exits(self, initial):
        # A state that only timers can leave is stuck unless one of them may be running there.
        running = self.running_timers(initial)
        states = {i: n for n, i in self.states.items()}
        timers = {i: n for n, i in self.timers.items()}
        for s in range(len(self.st)):
            if running[s] < 0 or self.st[s][6] & form.F_FINAL:
                continue
            outs = [t for t in range(self.st[s][0], self.st[s][1]) if self.tr[t][9] not in (-1, s)]
            if not outs or [t for t in outs if self.tr[t][0] != form.EV_TIMER]:
                continue
            if [t for t in outs if running[s] >> self.tr[t][1] & 1]:
                continue
            names = []
            for t in outs:
                n = quote(timers[self.tr[t][1]])
                if n not in names:
                    names.append(n)
            self.err(
                "states[%d]" % s,
                "state %s can only be left by timer %s, which nothing starts while the workflow "
                "is in it (it would stay there forever)" % (quote(states[s]), " or ".join(names)),
            )

    def running_timers(self, initial):
        # Per state, a bit mask of the timers that may be running while the workflow is in it
        # (-1: never entered): started by the entry or transition actions on the way in, or
        # by its own internal transitions, and not canceled since.
        st, tr = self.st, self.tr
        run = [-1] * len(st)
        run[initial] = self.timer_actions(0, st[initial][2], st[initial][3])
        todo = [initial]
        while todo:
            s = todo.pop()
            inside = run[s]
            grown = True
            while grown:  # internal transitions may start (or cancel) timers in the state
                grown = False
                for t in range(st[s][0], st[s][1]):
                    if tr[t][9] == -1:
                        m = inside | self.timer_actions(inside, tr[t][7], tr[t][8])
                        grown = grown or m != inside
                        inside = m
            run[s] = inside
            for t in range(st[s][0], st[s][1]):
                u = tr[t][9]
                if u < 0:
                    continue
                m = self.timer_actions(inside, st[s][4], st[s][5])
                m = self.timer_actions(m, tr[t][7], tr[t][8])
                m = self.timer_actions(m, st[u][2], st[u][3])
                if run[u] < 0 or run[u] | m != run[u]:
                    run[u] = m if run[u] < 0 else run[u] | m
                    todo.append(u)
        return run

    def timer_actions(self, mask, a, end):
        # ``mask`` after the actions [a, end): start_timer sets a timer's bit, cancel clears it.
        while a < end:
            code, x = self.ac[a][0], self.ac[a][1]
            if code == form.ACT_START_TIMER:
                mask |= 1 << x
            elif code == form.ACT_CANCEL_TIMER:
                mask &= ~(1 << x)
            a += 1
        return mask

    def check_state(self, i, s):
        p = "states[%d]" % i
        rec = [0, 0, 0, 0, 0, 0, 0]
        self.st.append(rec)
        if not self.obj(p, s, ("name",), ("entry", "exit", "on", "final")):
            return
        final = s.get("final", False)
        if final is not True and final is not False:
            self.err(p + ".final", "expected true or false, got " + kind_of(final))
        rec[6] = form.F_FINAL if final is True else 0
        rec[2] = len(self.ac)
        entry = self.items(p + ".entry", s.get("entry", []), form.MAX_ACTIONS, "actions")
        for j in range(len(entry)):
            a = entry[j]
            self.check_action("%s.entry[%d]" % (p, j), a)
        rec[3] = rec[4] = len(self.ac)
        exits = self.items(p + ".exit", s.get("exit", []), form.MAX_ACTIONS, "actions")
        if final is True and exits:
            self.err(p + ".exit", "a final state is never left, so exit actions never run")
        for j in range(len(exits)):
            a = exits[j]
            self.check_action("%s.exit[%d]" % (p, j), a)
        rec[5] = len(self.ac)
        rec[0] = len(self.tr)
        on = self.items(p + ".on", s.get("on", []), form.MAX_TRANSITIONS, "transitions")
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
                "(no way out)" % quote(s.get("name")),
            )

    def check_transition(self, p, t, state):
        rec = [0] * 10
        if len(self.tr) == form.MAX_TRANSITIONS:
            self.err(
                p,
                "transition %d is over the limit of %d per workflow"
                % (form.MAX_TRANSITIONS + 1, form.MAX_TRANSITIONS),
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
                terms = self.items(p + ".guard", g, form.MAX_GUARD_TERMS, "comparisons")
                for k in range(len(terms)):
                    c = terms[k]
                    self.check_comparison("%s.guard[%d]" % (p, k), c)
            else:
                self.check_comparison(p + ".guard", g)
        rec[6] = len(self.gd)
        rec[7] = len(self.ac)
        acts = self.items(p + ".actions", t.get("actions", []), form.MAX_ACTIONS, "actions")
        for k in range(len(acts)):
            a = acts[k]
            self.check_action("%s.actions[%d]" % (p, k), a)
        rec[8] = len(self.ac)
        return None if target is None or target < 0 else target

    def check_trigger(self, p, w, rec):
        kind = self.tagged(p, w, TRIGGERS, "trigger")
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
            rec[0] = form.EV_SAMPLE
            rec[1] = self.ref(kp, v, self.inputs, "input") or 0
            rec[3] = (
                self.integer(p + ".level", w.get("level", 0), -form.S16_MAX, form.S16_MAX, _S16)
                or 0
            )
            if kind == "crosses":
                d = w.get("direction", "any")
                if not isinstance(d, str) or d not in _DIRECTIONS:
                    self.err(p + ".direction", "expected 'up', 'down' or 'any', got " + quote(d))
                rec[2] = _DIRECTIONS.get(d, form.C_ANY) if isinstance(d, str) else form.C_ANY
            else:
                rec[2] = form.C_ABOVE if kind == "above" else form.C_BELOW
                if "for_ms" in w:
                    rec[4] = (
                        self.integer(p + ".for_ms", w["for_ms"], 1, form.DURATION_MAX, _MS) or 0
                    )
        elif kind == "timer":
            rec[0] = form.EV_TIMER
            rec[1] = self.ref(kp, v, self.timers, "timer") or 0
        elif kind == "command":
            rec[0] = form.EV_COMMAND
            if self.name(kp, v) is not None:
                if v not in self.commands:
                    if len(self.commands) == form.MAX_COMMANDS:
                        self.err(
                            kp,
                            "command %d is over the limit of %d"
                            % (form.MAX_COMMANDS + 1, form.MAX_COMMANDS),
                        )
                    self.commands[v] = len(self.commands)
                rec[1] = self.commands[v]
        elif kind == "boot":
            rec[0] = form.EV_BOOT
            if v is not True:
                self.err(kp, "expected true, got " + kind_of(v))
        else:
            rec[0] = form.EV_LINK_UP if v == "up" else form.EV_LINK_DOWN
            if not isinstance(v, str) or v not in ("up", "down"):
                self.err(
                    kp,
                    "expected 'up' or 'down', got "
                    + (quote(v) if isinstance(v, str) else kind_of(v)),
                )

    def check_comparison(self, p, c):
        rec = [form.O_INPUT, 0, 0, form.O_CONST, 0]
        self.gd.append(rec)
        if not self.obj(p, c, ("op", "value"), ("input", "var")):
            return
        side = self.one_of(p, c, ("input", "var"), "left-hand side (input or var)")
        if side == "input":
            rec[1] = self.ref(p + ".input", c["input"], self.inputs, "input") or 0
        elif side == "var":
            rec[0] = form.O_VAR
            rec[1] = self.ref(p + ".var", c["var"], self.vars, "var") or 0
        op = c.get("op", "<")
        if op in form.OPS and isinstance(op, str):
            rec[2] = form.OPS.index(op)
        else:
            self.err(
                p + ".op",
                "expected one of %s, got %s"
                % (" ".join(form.OPS), quote(op) if isinstance(op, str) else kind_of(op)),
            )
        if side == "input":
            rec[3], rec[4] = self.operand(p + ".value", c.get("value", 0), form.S16_MAX, _S16)
        else:
            rec[3], rec[4] = self.operand(p + ".value", c.get("value", 0), form.VAR_MAX, _VARS)

    def operand(self, p, x, most, what):
        if isinstance(x, dict):
            if not self.obj(p, x, (), ("input", "var")):
                return form.O_CONST, 0
            side = self.one_of(p, x, ("input", "var"), "operand (input or var)")
            if side == "input":
                return form.O_INPUT, self.ref(p + ".input", x["input"], self.inputs, "input") or 0
            if side == "var":
                return form.O_VAR, self.ref(p + ".var", x["var"], self.vars, "var") or 0
            return form.O_CONST, 0
        if is_int(x):
            return form.O_CONST, self.integer(p, x, -most, most, what) or 0
        self.err(p, 'expected an integer, {"input": name} or {"var": name}, got ' + kind_of(x))
        return form.O_CONST, 0

    def check_action(self, p, a):
        rec = [form.ACT_SET_OUTPUT, 0, form.O_NONE, 0]
        if len(self.ac) == form.MAX_ACTIONS:
            self.err(
                p,
                "action %d is over the limit of %d per workflow"
                % (form.MAX_ACTIONS + 1, form.MAX_ACTIONS),
            )
        self.ac.append(rec)
        kind = self.tagged(p, a, ACTIONS, "action")
        if kind is None:
            return
        req, opt = _ACTION_KEYS[kind]  # req includes the kind's own key
        self.obj(p, a, req, opt)
        rec[0] = _ACTION_CODES[kind]
        v = a.get(kind)
        kp = p + "." + kind
        if kind == "set_output":
            rec[1] = self.ref(kp, v, self.outputs, "output") or 0
            rec[2], rec[3] = self.operand(p + ".value", a.get("value", 0), form.S16_MAX, _S16)
        elif kind in ("start_timer", "cancel_timer"):
            rec[1] = self.ref(kp, v, self.timers, "timer") or 0
            if kind == "start_timer":
                rec[2] = form.O_CONST
                rec[3] = self.integer(p + ".ms", a.get("ms", 1), 1, form.DURATION_MAX, _MS) or 1
        elif kind in ("set_var", "add_var"):
            rec[1] = self.ref(kp, v, self.vars, "var") or 0
            rec[2], rec[3] = self.operand(p + ".value", a.get("value", 0), form.VAR_MAX, _VARS)
        elif kind == "publish":
            rec[1] = self.ref(kp, v, self.events, "event") or 0
            if "value" in a:
                rec[2], rec[3] = self.operand(p + ".value", a["value"], form.VAR_MAX, _VARS)
        else:
            rec[1] = self.ref(kp, v, self.inputs, "input") or 0
            rec[2] = form.O_CONST
            rec[3] = (
                self.integer(
                    p + ".ms",
                    a.get("ms", form.PERIOD_MIN),
                    form.PERIOD_MIN,
                    form.DURATION_MAX,
                    "the period range (ms)",
                )
                or form.PERIOD_MIN
            )

    def check_migrate(self, m):
        if not isinstance(m, dict):
            self.err("migrate", "expected an object, got " + kind_of(m))
            return
        for k in getattr(m, "dups", ()):
            self.err("migrate." + k, "duplicate key %r" % k)
        if len(m) > form.MAX_MIGRATE_VERSIONS:
            self.err(
                "migrate", "%d versions, over the limit of %d" % (len(m), form.MAX_MIGRATE_VERSIONS)
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
                self.err(p, "key %s is not a version number" % quote(key))
            elif self.version is not None and not 1 <= old < self.version:
                self.err(p, "version %d is not earlier than this version %d" % (old, self.version))
                old = None
            mapping = m[key]
            if not isinstance(mapping, dict):
                self.err(p, "expected an object {old state: new state}, got " + kind_of(mapping))
                continue
            for k in getattr(mapping, "dups", ()):
                self.err(p + "." + k, "duplicate key %r" % k)
            if len(mapping) > form.MAX_STATES:
                self.err(p, "%d entries, over the limit of %d" % (len(mapping), form.MAX_STATES))
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
        if total > form.MAX_MIGRATE_ENTRIES:
            self.err(
                "migrate", "%d entries, over the limit of %d" % (total, form.MAX_MIGRATE_ENTRIES)
            )
        self.mig.sort(key=lambda e: e[0])


def _is_field(s):
    # "alpha" or "coeffs[3]": a filter spec field named at the start of a filter spec's error.
    if not s or not "a" <= s[0] <= "z":
        return False
    for c in s:
        if not ("a" <= c <= "z" or "0" <= c <= "9" or c in "_[]"):
            return False
    return True
