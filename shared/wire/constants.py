"""Every constant of the wire protocol: versions, flags, sizes, limits, ack codes and loss
reasons (the formats are documented in ``shared/wire/__init__.py``).

This module is the one source of these values. The companion reads them here (or through
``shared.wire.codec``); a board never imports it: its modules hold private ``const()``
copies, which MicroPython folds into the bytecode, written by ``python -m tools.dev.consts``
and checked by ``make test``.
"""

VERSION = 1  # of batches and JSON messages

# --- readings batches -----------------------------------------------------------------------

HISTORICAL = 1  # flag: backlog replayed after being offline
SYNCED = 2  # flag: a time anchor follows the header
MAX_BATCH = 512  # records per batch
SEQ_MAX = 0x3FFFFFFF  # 2**30 - 1, the largest small int on a 32-bit MicroPython
HEADER_SIZE = 14
ANCHOR_SIZE = 12
RECORD_SIZE = 9  # up_s u32, up_ms u16, value i16, channel u8
MAX_BATCH_BYTES = 4634  # HEADER_SIZE + ANCHOR_SIZE + MAX_BATCH * RECORD_SIZE
U32_MAX = 0xFFFFFFFF

# --- acks: the board's answer to each command ------------------------------------------------

OK = 0
DUPLICATE = 1  # already done: the stored ack is sent again
IN_PROGRESS = 2  # accepted and running (e.g. an install's health window)
BAD_SIGNATURE = 3
EXPIRED = 4
REPLAYED = 5
MALFORMED = 6
UNKNOWN_KIND = 7
REJECTED = 8  # valid but refused (e.g. a workflow failed validation)
FAILED = 9  # ran and failed (e.g. the health window)
BUSY = 10  # busy with another change (e.g. an install in its health window)
UNSAFE = 11  # no safe state within safe_wait_s: the highest ack code
ACK_NAMES = {
    OK: "OK",
    DUPLICATE: "DUPLICATE",
    IN_PROGRESS: "IN_PROGRESS",
    BAD_SIGNATURE: "BAD_SIGNATURE",
    EXPIRED: "EXPIRED",
    REPLAYED: "REPLAYED",
    MALFORMED: "MALFORMED",
    UNKNOWN_KIND: "UNKNOWN_KIND",
    REJECTED: "REJECTED",
    FAILED: "FAILED",
    BUSY: "BUSY",
    UNSAFE: "UNSAFE",
}
LOSS_REASONS = ("store_full", "corrupt")

# --- signed commands -------------------------------------------------------------------------

MAX_LIFETIME = 604800  # 7 days
CLOCK_SKEW = 300  # s a command's iat may lie ahead of the board's clock

# --- log lines (up/log): a board's warnings, errors and workflow state changes ---------------

LOG_RECORD_SIZE = 11  # up_s u32, up_ms u16, code u8, a i16, b i16
LOG_LINES = 16  # lines a board holds (a fixed ring: the oldest goes)
LOG_EVERY_MS = 10000  # a board publishes up/log at most this often
# A line's code says its level and what its two small ints (S16) mean.
LOG_BOOT = 1  # info: the app started (a, b: 0)
LOG_STATE = 2  # info: the workflow entered state a (index); b: transitions since the last
LOG_LINK_UP = 3  # info: connected; a: failed connects this boot (at most 32767)
LOG_LINK_DOWN = 4  # warning: a connect failed after being connected (or at boot)
LOG_REFUSED = 5  # warning: a command was refused; a: its ack code
LOG_FAILED = 6  # error: a command ran and failed (an install rolled back, a bad bundle)
LOG_FAULT = 7  # error: the workflow raised (it keeps running, or a trial rolls back)
LOG_INBOX_FULL = 8  # warning: the inbox was full, a command dropped (pulled again)
LOG_LOSS = 9  # warning: the store lost readings; a: LOSS_REASONS index, b: count
LOG_CODES = {  # code: (level, name)
    LOG_BOOT: ("info", "boot"),
    LOG_STATE: ("info", "state"),
    LOG_LINK_UP: ("info", "link_up"),
    LOG_LINK_DOWN: ("warning", "link_down"),
    LOG_REFUSED: ("warning", "command_refused"),
    LOG_FAILED: ("error", "command_failed"),
    LOG_FAULT: ("error", "workflow_fault"),
    LOG_INBOX_FULL: ("warning", "inbox_full"),
    LOG_LOSS: ("warning", "store_loss"),
}
LOG_LEVELS = ("info", "warning", "error")
