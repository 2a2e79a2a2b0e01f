"""The Orrery wire protocol: MQTT topics, readings batches, JSON messages, sequence numbers and
HMAC-SHA256 signed command envelopes. Runs unchanged on the board and in the companion.

=====================  ========================================================================
module                 what it holds
=====================  ========================================================================
``constants``          every constant of the protocol: versions, flags, sizes, limits, ack codes
``message``            the checks every message shares, the fixed-layout JSON writer, the
                       readings batch header and the event message (a board keeps it loaded)
``connect``            topics, the boot id, the last will and the pull (a board's start-up)
``report``             the state (birth) message, command acks and loss reports
``errors``             the error texts of the checks (imported only to raise one)
``verifier``           the board's gate for signed command envelopes
``hmac256``            HMAC-SHA256 for MicroPython, which has no ``hmac``
``codec``              the companion's view: every public name, the decoders, ``encode_batch``,
                       ``sign_command``, ``verify_envelope``, ``Seq`` (a board never imports it)
=====================  ========================================================================

A board imports only what it runs and drops the rare modules again (``firmware/README.md``,
"Memory"); the board's modules hold private ``const()`` copies of ``constants`` and of the
error indexes of ``errors``, written by ``python -m tools.dev.consts`` and checked by
``make test``.

Topics
------
``orrery/<fleet>/<device>/<dir>/<name>``; ids are 1..64 chars of ``[A-Za-z0-9_.-]``.
The board publishes under ``up/`` and subscribes under ``down/``, so broker ACLs are two
patterns: ``pattern write orrery/+/%u/up/#`` and ``pattern read orrery/+/%u/down/#``.

- ``up/state``    retained state (birth) message; the MQTT last will puts an offline state here
- ``up/readings`` readings batches (binary, below)
- ``up/events``   workflow events (JSON)
- ``up/acks``     command acks (JSON)
- ``up/loss``     dropped-range reports (JSON): the store dropped a segment or a corrupt record
- ``up/log``      the board's log lines (binary, below): warnings, errors, state changes
- ``up/pull``     on connect the board asks for its pending commands (JSON)
- ``down/cmd``    signed command envelopes (JSON)

Readings batch (little-endian; a contiguous run of sequence numbers from one boot)
----------------------------------------------------------------------------------
header, 14 bytes: ``"OR"``, version u8 (=1), flags u8 (bit0 HISTORICAL: backlog replayed after
being offline; bit1 SYNCED: an anchor follows), boot_id u32 (1 .. 2**30-1), first_seq u32,
count u16 (1 .. MAX_BATCH).
anchor, 12 bytes, only if SYNCED: anchor_up_s u32, anchor_up_ms u16, anchor_unix_s u32,
anchor_unix_ms u16: the uptime at which the device learned wall time, and that wall time.
then ``count`` records of 9 bytes: up_s u32 (< 2**30), up_ms u16 (0..999), value i16 (S16,
-32767..32767), channel u8. Record i has seq ``first_seq + i``; the last seq is < 2**30.
Sequence numbers stay below 2**30 so the board never makes a big int: at 4 readings/s that
lasts about 8.5 years.

Log lines (``up/log``, little-endian; lines numbered 0, 1, ... in each boot)
-----------------------------------------------------------------------------
the readings batch header (14 bytes, flags 0, no anchor; ``first_seq`` is the first line's
number, ``count`` the lines), then ``count`` records of 11 bytes: up_s u32, up_ms u16, code u8,
a i16, b i16. ``LOG_CODES`` (``constants``) gives each code's level (info, warning, error) and
what a and b mean; a board sends no text, the companion words a line from its code (a code it
does not know is kept, as a warning). A board holds its newest ``LOG_LINES`` lines in a fixed
ring and sends those not sent yet at most every ``LOG_EVERY_MS``: a jump in the numbers is
lines the ring dropped before they were sent; a message sent again repeats its numbers (the
companion keys a line by device, boot and number). Times come from the boot's anchor, as an
event's do.

JSON messages (``"v": 1``; unknown keys are ignored, any other ``v`` is refused)
--------------------------------------------------------------------------------
- state: ``online fw wf wf_ver wf_hash boot backlog synced anchor last_seq [mpy] [extra]``
  (``fw`` the running app bundle's version, ``mpy`` the ``.mpy`` version it loads, "6.3");
  the last will is ``{"v":1,"online":false,"boot":N}`` (decoded with the other keys None).
- event: ``boot seq up_s up_ms state event value``
- ack:   ``id code detail`` (``id`` null when the command's id could not be trusted)
- loss:  ``boot first last reason`` (reason ``store_full`` or ``corrupt``)
- pull:  ``boot``
Names (state, event, wf, extra keys) are ids as above; command ids and wf_hash may also hold
``:``. Encoders
write ``v`` and the keys in the order listed, nested dicts sorted, no spaces and non-ASCII
text as raw UTF-8, so both runtimes write the same bytes (MicroPython's json.dumps orders keys
by hash and spaces them). Decoders return a dict of the listed keys, the anchor as a tuple.

Command envelope
----------------
``{"v":1,"b":BODY,"s":HEX}``: BODY is the JSON text of ``{"args","dev","exp","iat","id","kind"}``
(and ``"skew"`` when it is not 0) and HEX the HMAC-SHA256 of BODY's UTF-8 bytes under the
device's key. The signature covers those exact bytes, so no canonical JSON is needed (but text
beyond U+FFFF must stay raw UTF-8 in the envelope: MicroPython's json does not join escaped
surrogate pairs). iat/exp are unix seconds on the companion's clock and ``skew`` the
companion's estimate of the board's clock minus its own, in seconds (|skew| < 2**32): the board
checks the window against its own clock minus ``skew`` (``verifier.Verifier``). All three are
big ints on the board: command handling is not a per-sample path.
"""
