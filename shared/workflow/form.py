"""The compiled workflow's device form: its layout, its limits and every constant of it, and
of the executor's snapshot.

``shared.workflow.compiler`` writes the form; boards load it with
``shared.workflow.program.Program``. This module is the one source of these values: the
compiler, tools and tests import it, while a board never does: its modules
(``shared.workflow.load``, ``executor``, ``start``, ``snapshot``) hold private ``const()``
copies, which MicroPython folds into the bytecode, written by ``python -m tools.dev.consts``.

Device form (all integers little-endian)
----------------------------------------
``b"ORWF"`` then a header of 18 int32 words:

    format (=FORMAT), version, initial state, and the counts of states, transitions, guard
    comparisons, actions, inputs, outputs, vars, timers, events, commands, filters, filter
    params, migrate versions, migrate entries, and string-data bytes.

Then int32 sections, each ``count * width`` words, each loaded with one slice into an
``array('i')`` (offsets below are word offsets inside a record):

    states       _SW=7   t_begin t_end  entry_begin entry_end  exit_begin exit_end  flags
    transitions  _TW=10  event arg cond level for_ms  g_begin g_end  a_begin a_end  target
    guards       _GW=5   lhs_kind lhs_index op rhs_kind rhs_value
    actions      _AW=4   kind arg operand_kind operand_value
    inputs       _IW=3   period_ms f_begin f_end
    filters      _FW=3   code p_begin p_end
    params       1      filter parameters, in order
    var_init     1      initial value of each var
    migrate      _MW=3   old_version e_begin e_end       (old_version ascending)
    migrate_to   1      new state index of each migrate entry

``[begin, end)`` are index ranges into the named section. ``target`` is -1 for an internal
transition. ``event`` is an ``EV_*`` kind; ``arg`` the timer, command or input index (0
otherwise); ``cond`` a ``C_*`` code for sample triggers (0 otherwise), ``level`` its S16
level and ``for_ms`` its hold time (0: none). Operands are ``(O_CONST, value)``,
``(O_INPUT, index)``, ``(O_VAR, index)`` or ``(O_NONE, 0)``. State flags: bit 0 final, bit 1
safe (an install, a bundle switch or a reboot may happen in it: ``safe_states``), and from bit
SAFE_SHIFT on the workflow's ``safe_wait_s``, the same in every state (0: the workflow names no
safe states, so every state is safe).

Last, the string table: one length byte per string, then the strings' bytes, in this
order: workflow name, state names, input names, input channels, output names, var names,
timer names, event names, command names, then the old state name of each migrate entry.
Every string is a name: 1..24 chars of ``[a-z0-9_]`` starting with a letter.

Executor snapshot (little-endian): program hash prefix (8 bytes), format u8 (=SNAP_FORMAT),
state u8, and u8 counts of vars, outputs, timers and inputs, 2 zero bytes (SNAP_HEADER bytes
in all); then int32 words: vars, outputs, timers' remaining ms (-1: not running), inputs'
current period_ms.
"""

MAGIC = b"ORWF"
FORMAT = 1
HEADER_WORDS = 18
HEADER_BYTES = 76  # 4 + 4 * HEADER_WORDS

# Limits, checked by the compiler and again by the loader.
MAX_STATES = 32
MAX_TRANSITIONS = 128
MAX_ACTIONS = 256  # entry, exit and transition actions together
MAX_GUARD_TERMS = 8  # comparisons ANDed in one guard
MAX_INPUTS = 8
MAX_FILTERS = 8  # per input
MAX_PARAMS = 8  # per filter
MAX_VARS = 16
MAX_TIMERS = 8
MAX_EVENTS = 16
MAX_COMMANDS = 16
MAX_OUTPUTS = 16
MAX_MIGRATE_VERSIONS = 16
MAX_MIGRATE_ENTRIES = 64
MAX_NAME = 24
MAX_SOURCE = 16384  # authoring JSON text, bytes
MAX_BLOB = 8192
MAX_VERSION = 1048576  # 2**20
SAFE_WAIT_DEFAULT = 600  # s a board waits for a safe state (``safe_wait_s``), unless set
SAFE_WAIT_MAX = 86400  # s

# Ranges. Levels, input comparisons and output values are S16 samples; vars stay within
# +-VAR_MAX so that var + operand never leaves the small-int range before it saturates.
S16_MAX = 32767
VAR_MAX = 536870911  # 2**29 - 1
DURATION_MAX = 536870911  # ms; half the 2**30 tick range, so tick diffs are exact
PERIOD_MIN = 10  # ms
TICKS_MAX = 1073741823  # 2**30 - 1: ticks wrap to 0 after this
NO_VALUE = -536870912  # -2**29: an input with no value yet; outside every range

# The executor's snapshot.
SNAP_FORMAT = 1
SNAP_HEADER = 16  # bytes before the int32 words

# Events (transition `event` and Executor.step kinds).
EV_BOOT = 0
EV_LINK_UP = 1
EV_LINK_DOWN = 2
EV_TIMER = 3
EV_COMMAND = 4
EV_SAMPLE = 5

# Sample conditions.
C_ABOVE = 1
C_BELOW = 2
C_UP = 3
C_DOWN = 4
C_ANY = 5

# Guard operators: a comparison's op is its index in OPS.
OPS = ("<", "<=", ">", ">=", "==", "!=")
_OP_LT = 0
_OP_LE = 1
_OP_GT = 2
_OP_GE = 3
_OP_EQ = 4
_OP_NE = 5

# Operand kinds.
O_CONST = 0
O_INPUT = 1
O_VAR = 2
O_NONE = 3

# Action kinds.
ACT_SET_OUTPUT = 1
ACT_START_TIMER = 2
ACT_CANCEL_TIMER = 3
ACT_SET_VAR = 4
ACT_ADD_VAR = 5
ACT_PUBLISH = 6
ACT_SET_PERIOD = 7

# Record widths and field offsets (shared.workflow.load and shared.workflow.executor keep private copies).
_SW = 7
_S_TRANS = 0
_S_ENTRY = 2
_S_EXIT = 4
_S_FLAGS = 6
F_FINAL = 1
F_SAFE = 2
SAFE_SHIFT = 8  # the state flags' bits from here on hold the workflow's safe_wait_s
_TW = 10
_T_EVENT = 0
_T_ARG = 1
_T_COND = 2
_T_LEVEL = 3
_T_FOR = 4
_T_GUARD = 5
_T_ACT = 7
_T_TARGET = 9
_GW = 5
_AW = 4
_IW = 3
_FW = 3
_MW = 3

# Per action kind: the index in the counts tuple of what its target indexes.
ACTION_COUNT = (5, 7, 7, 6, 6, 8, 4)


def is_name(s):
    """True if ``s`` is a str of 1..MAX_NAME chars of ``[a-z0-9_]`` starting with a letter."""
    if not isinstance(s, str) or not 0 < len(s) <= MAX_NAME or not "a" <= s[0] <= "z":
        return False
    for c in s:
        if not ("a" <= c <= "z" or "0" <= c <= "9" or c == "_"):
            return False
    return True
