"""Constants and limits of the compiled workflow's compact device form.

``shared.program`` documents the form. These public names are for the cloud compiler
(``shared.workflow``), tools and tests; a board never imports this module: the board's
modules (``shared.progload``, ``shared.executor``) keep private ``const()`` copies, which
MicroPython folds into the bytecode, so no name costs RAM (``tests/test_executor_constants.py``
checks that the copies agree with these).
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

# Ranges. Levels, input comparisons and output values are S16 samples; vars stay within
# +-VAR_MAX so that var + operand never leaves the small-int range before it saturates.
S16_MAX = 32767
VAR_MAX = 536870911  # 2**29 - 1
DURATION_MAX = 536870911  # ms; half the 2**30 tick range, so tick diffs are exact
PERIOD_MIN = 10  # ms
TICKS_MAX = 1073741823  # 2**30 - 1: ticks wrap to 0 after this
NO_VALUE = -536870912  # -2**29: an input with no value yet; outside every range

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

# Record widths and field offsets (shared.progload and shared.executor keep private copies).
_SW = 7
_S_TRANS = 0
_S_ENTRY = 2
_S_EXIT = 4
_S_FLAGS = 6
F_FINAL = 1
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
