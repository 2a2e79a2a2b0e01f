"""The workflow compiler: validate a definition (authoring JSON) and compile it to the device
form.

Authoring time only (the cloud and the tests, on CPython and MicroPython); boards load
the compiled form with ``shared.workflow.program.Program``. Limits and ranges are the constants
of ``shared.workflow.form`` (MAX_*, S16_MAX, VAR_MAX, DURATION_MAX, PERIOD_MIN, MAX_VERSION).

A definition is a dict, or its JSON text as str or bytes (at most MAX_SOURCE bytes):

    name, version (1..MAX_VERSION), initial, states        required
    description, inputs, outputs, vars, timers, events, migrate,
    safe_states, safe_wait_s                                          optional
    inputs[]   {name, channel, period_ms (>= PERIOD_MIN), filters?: [filter spec]}
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
    safe_states  [state names]: an install, a bundle switch or a reboot waits (up to
               safe_wait_s, 1..SAFE_WAIT_MAX s, default SAFE_WAIT_DEFAULT) until the running
               workflow is in one of them; omitted: every state is safe

Ranges: levels, input comparisons and output values S16; var values +-VAR_MAX; durations
1..DURATION_MAX ms. Commands are declared by use. Names: 1..MAX_NAME chars of [a-z0-9_]
starting with a letter.
"""

from shared.workflow import encode
from shared.workflow.footprint import heap_bytes
from shared.workflow.program import Program
from shared.workflow.rules import Checker


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


def errors(defn, profile=None):
    """Every problem of ``defn`` (dict, or JSON str/bytes) as a list of (path, reason);
    empty if it is valid (for ``profile``'s channels and outputs, when given)."""
    return _check(defn, profile).errs


def validate(defn, profile=None):
    """Raise WorkflowError listing every problem of ``defn``; return None if valid."""
    errs = errors(defn, profile)
    if errs:
        raise WorkflowError(errs)


def compile(defn, profile=None):
    """Validate ``defn`` and compile it; returns a Compiled. Raises WorkflowError."""
    c = _check(defn, profile)
    if c.errs:
        raise WorkflowError(c.errs)
    prog = Program(c.blob)
    return Compiled(c.blob, prog.name, prog.version, heap_bytes(prog), prog.hash)


def _check(defn, profile):
    # One pass of the rules, then the layout of a valid definition (which can still be too big).
    c = Checker(profile)
    c.check(defn)
    c.blob = None if c.errs else encode.encode(c)
    return c
