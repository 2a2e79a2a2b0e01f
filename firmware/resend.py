"""A ``resend`` command's work in the link thread: publish the range it asks for again from
flash, a batch per pass, and ack it once done, saying what the store no longer holds.

Rare, so the link thread imports this module for a pass and drops it again with its reports
(``firmware.REPORTS``).
"""

from shared import const

# Copied from firmware/uplink.py by python -m tools.dev.consts: edit them there.
_BATCH = const(64)  # records per readings batch
_OFF = const(26)  # records start here in the batch buffer
# Copied from shared/wire/constants.py by python -m tools.dev.consts: edit them there.
_HISTORICAL = const(1)  # flag: backlog replayed after being offline
_OK = const(0)


def step(node):
    """Publish the next batch of the oldest resend in ``node.resends`` (first, last, cmd_id);
    ack the command once its range is done."""
    first, last, cmd_id = node.resends[0]
    with node.lock:
        count, boot, start = node.store.read_range(
            node.batch_mv[_OFF:], first, min(last, first + _BATCH - 1)
        )
    if count == 0:
        node.resends.pop(0)
        node.ack_later(
            cmd_id, _OK, "resent up to {}; {}..{} not held".format(first - 1, first, last)
        )
        return
    if node._publish_batch(count, boot, start, _HISTORICAL):
        nxt = start + count
        if nxt > last:
            node.resends.pop(0)
            gone = "" if start == first else "; {}..{} not held".format(first, start - 1)
            node.ack_later(cmd_id, _OK, "resent {}..{}{}".format(start, last, gone))
        else:
            node.resends[0] = (nxt, last, cmd_id)
