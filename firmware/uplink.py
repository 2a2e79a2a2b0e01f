"""The node's link thread: connect with exponential backoff and full jitter; on connect,
subscribe to commands, publish the retained state and ask for pending commands; then publish
acks, loss reports, resends, readings batches (QoS 1; the store's ack cursor moves only after
the PUBACK), events and a periodic state. A hanging DNS lookup or a socket timeout costs this
thread time, never a sample.

``Uplink`` is a part of ``firmware.node.Node``. It loads the encoders of its occasional
reports (state, acks, loss) per report and drops them again (``drop(REPORTS)``): this thread
alone imports and drops that module.
"""

import json

from firmware import REPORTS, drop
from firmware.backoff import Backoff
from firmware.clock import TICKS_MASK, is_due
from firmware.files import write_atomic
from shared import const
from shared.wire import message

FW_VERSION = "0.1.0"
_BATCH = const(64)  # records per readings batch
_MAX_INBOX = const(8)
# Command envelopes the node takes in at most, in bytes (the link leaves the rest in the socket,
# unacknowledged, for the broker to hold: firmware/link.py, "budget"). One envelope always fits
# when none is held. A sender keeps at most this many bytes of commands in flight.
CMD_BUDGET = const(4096)
_STATE_EVERY_MS = const(60000)
_HISTORICAL_AFTER_S = const(30)  # a batch whose newest reading is older than this is backlog
# Copied from shared/wire/constants.py by python -m tools.dev.consts: edit them there.
_ANCHOR_SIZE = const(12)
_HEADER_SIZE = const(14)
_HISTORICAL = const(1)  # flag: backlog replayed after being offline
_LOG_EVERY_MS = const(10000)  # a board publishes up/log at most this often
_LOG_INBOX_FULL = const(8)  # warning: the inbox was full, a command dropped (pulled again)
_LOG_LINES = const(16)  # lines a board holds (a fixed ring: the oldest goes)
_LOG_LINK_DOWN = const(4)  # warning: a connect failed after being connected (or at boot)
_LOG_LINK_UP = const(3)  # info: connected; a: failed connects this boot (at most 32767)
_LOG_LOSS = const(9)  # warning: the store lost readings; a: LOSS_REASONS index, b: count
_LOG_RECORD_SIZE = const(11)  # up_s u32, up_ms u16, code u8, a i16, b i16
_OK = const(0)
_RECORD_SIZE = const(9)  # up_s u32, up_ms u16, value i16, channel u8
# Copied from shared/workflow/form.py by python -m tools.dev.consts: edit them there.
_NO_VALUE = const(-536870912)  # -2**29: an input with no value yet; outside every range
# Copied from firmware/sampler.py by python -m tools.dev.consts: edit them there.
_MAX_EVENTS = const(32)  # workflow events waiting for the uplink (the oldest is dropped)

_OFF = const(_HEADER_SIZE + _ANCHOR_SIZE)  # records start here in the batch buffer
_LOG_BYTES = const(_LOG_LINES * _LOG_RECORD_SIZE)  # the log ring (firmware.sampler)


class Uplink:
    """The link thread's half of a Node (see the module doc)."""

    def __init__(self, topics, will_payload, pull_payload):
        self.topics = topics
        self.will_payload = will_payload
        self.pull_payload = pull_payload
        self.backoff = Backoff(rand=None)
        self.retry_at = self.ticks()
        self.state_at = self.ticks()
        self.event_seq = 0
        self.log_sent = 0  # log lines published (the ring's seq of the next one to send)
        self.log_at = self.retry_at  # when up/log may be published next
        self.batch = bytearray(_OFF + _BATCH * _RECORD_SIZE)
        self.batch_mv = memoryview(self.batch)
        self.state_dirty = True
        self.confirmed = False  # a trial app bundle was confirmed (or there was none)
        self.confirm_after_s = self.cfg.get("confirm_after_s", 30)
        self.link.on_message = self._on_message
        self.link.budget = CMD_BUDGET
        self.link.held = self._held
        self.link.spool = self.root + "/inbox.spool"

    def _on_message(self, topic, payload):
        # link thread: only queue; the main thread owns the executor and the store
        if topic != self.topics[message.CMD]:
            return
        if len(self.inbox) >= _MAX_INBOX:
            print("orrery: inbox full, dropping a command (it is pulled again on reconnect)")
            self.log(_LOG_INBOX_FULL, 0, 0)
            return
        with self.lock:
            self.inbox.append(payload)
            self.inbox_bytes += len(payload)

    def _held(self):
        # the link's question: bytes of command envelopes the main thread has not handled yet
        # (a full inbox counts as the whole budget)
        return self.inbox_bytes if len(self.inbox) < _MAX_INBOX else CMD_BUDGET

    def step_link(self):
        """One pass of the link loop. Returns True if it did network work."""
        link = self.link
        now = self.ticks()
        if not link.connected:
            if not is_due(now, self.retry_at):
                return False
            if link.connect():
                self.backoff.reset()
                self._on_connect()
            else:
                if not self.backoff.attempt:  # the first failure in a row: the link is down
                    self.log(_LOG_LINK_DOWN, 0, 0)
                self.stats["link_drops"] += 1
                self.retry_at = (now + self.backoff.next_delay_ms()) & TICKS_MASK
                self.wf.link_event(False)
                return False
        link.poll()
        if not link.connected:
            return False
        if not self.confirmed and self.up.s >= self.confirm_after_s:
            self.confirmed = True  # the app reached the broker and stayed up:
            self.confirm_due = True  # the main thread confirms a trial bundle
        return (
            self._send_acks()
            or self._send_losses()
            or self._send_resend()
            or self._send_batch()
            or self._send_events()
            or self._send_log()
            or self._send_state(False)
        )

    def _on_connect(self):
        link = self.link
        link.subscribe(self.topics[message.CMD], 1)
        if not self.wall.synced and self.wall_ms is not None:
            ms = self.wall_ms()
            if ms is not None:
                self.wall.sync(ms // 1000, ms % 1000, self.up)
                self._save_anchor(self.boot_id, self.wall.anchor())
        self.log(_LOG_LINK_UP, min(self.stats["link_drops"], 32767), 0)
        self._send_state(True)
        link.publish(self.topics[message.PULL], self.pull_payload, 1)
        self.wf.link_event(True)

    def _save_anchor(self, boot_id, anchor):
        # remember this boot's anchor, so a later boot can send its backlog with correct times
        a = self.anchors
        a[boot_id] = anchor
        while len(a) > 8:
            del a[min(a)]
        data = {}
        for k in a:
            data[str(k)] = list(a[k])
        write_atomic(self.root + "/anchors.json", json.dumps(data))

    def _send_acks(self):
        if not self.outbox:
            return False
        cmd_id, code, detail = self.outbox[0]
        from shared.wire import report

        payload = report.encode_ack(cmd_id, code, detail)
        drop(REPORTS)
        if self.link.publish(self.topics[message.ACKS], payload, 1):
            with self.lock:
                self.outbox.pop(0)
            if code == _OK and self.reboot_requested:
                self.link.disconnect()
                if self.reset:
                    self.reset()
        return True

    def _send_losses(self):
        with self.lock:
            losses = self.store.losses()
        if not losses:
            return False
        first, last, reason = losses[0]
        from shared.wire import report

        payload = report.encode_loss(self.boot_id, first, last, reason)
        drop(REPORTS)
        if self.link.publish(self.topics[message.LOSS], payload, 1):
            with self.lock:
                self.store.losses_reported(1)
            self.log(_LOG_LOSS, reason != "store_full", min(last - first + 1, 32767))
        return True

    def _send_resend(self):
        if not self.resends:
            return False
        from firmware import resend

        try:
            resend.step(self)
        finally:
            drop(REPORTS)
        return True

    def _send_log(self):
        # the log lines not published yet (at most the ring's), at most once per LOG_EVERY_MS:
        # the batch header (no anchor; first_seq: the first line's) and their records
        if self.log_seq == self.log_sent or not is_due(self.ticks(), self.log_at):
            return False
        buf = self.batch
        r = self.log_ring
        with self.lock:
            end = self.log_seq
            n = min(end - self.log_sent, _LOG_LINES)
            o = (end - n) % _LOG_LINES * _LOG_RECORD_SIZE
            for i in range(n * _LOG_RECORD_SIZE):
                buf[_HEADER_SIZE + i] = r[(o + i) % _LOG_BYTES]
        message.batch_header_into(buf, 0, 0, self.boot_id, end - n, n, None)
        size = _HEADER_SIZE + n * _LOG_RECORD_SIZE
        if self.link.publish(self.topics[message.LOG], self.batch_mv[:size], 1):
            self.log_sent = end
            self.log_at = (self.ticks() + _LOG_EVERY_MS) & TICKS_MASK
        return True

    def _send_batch(self):
        with self.lock:
            count, boot, first = self.store.read_batch(self.batch_mv[_OFF:], _BATCH)
        if count == 0:
            return False
        flags = 0
        if (
            boot != self.boot_id
            or self.up.s - _rec_up_s(self.batch, _OFF, count) > _HISTORICAL_AFTER_S
        ):
            flags = _HISTORICAL
        if self._publish_batch(count, boot, first, flags):
            with self.lock:
                self.store.ack(first + count - 1)
            self.state_dirty = True
        return True

    def _publish_batch(self, count, boot, first, flags):
        anchor = self.wall.anchor() if boot == self.boot_id else self.anchors.get(boot)
        start = _OFF - _HEADER_SIZE - (_ANCHOR_SIZE if anchor else 0)
        message.batch_header_into(self.batch, start, flags, boot, first, count, anchor)
        end = _OFF + count * _RECORD_SIZE
        return self.link.publish(self.topics[message.READINGS], self.batch_mv[start:end], 1)

    def _send_events(self):
        if not self.ev_count:
            return False
        with self.lock:
            o = 5 * self.ev_head
            event, value, up_s, up_ms, state = self.ev[o : o + 5]
        wf = self.wf
        # events carry S16 values: an input without a value yet is None, a variable is clamped
        if value == _NO_VALUE:
            value = None
        elif value > 32767:
            value = 32767
        elif value < -32767:
            value = -32767
        payload = message.encode_event(
            self.boot_id,
            self.event_seq,
            up_s,
            up_ms,
            wf.prog.state_names[state],
            wf.prog.event_names[event],
            value,
        )
        if self.link.publish(self.topics[message.EVENTS], payload, 1):
            with self.lock:
                self.ev_head = (self.ev_head + 1) % _MAX_EVENTS
                self.ev_count -= 1
            self.event_seq += 1
        return True

    def _send_state(self, force):
        now = self.ticks()
        if (
            not force
            and not self.state_dirty
            and not is_due(now, (self.state_at + _STATE_EVERY_MS) & TICKS_MASK)
        ):
            return False
        wf = self.wf
        p = wf.prog
        with self.lock:
            backlog = self.store.backlog()
            last_seq = self.store.last_seq
        extra = {
            "board": self.cfg.get("board", ""),
            "invalid": wf.ex.invalid() if wf.ex else 0,
            "events_dropped": self.events_dropped,
            "missed": self.stats["missed"],
        }
        from shared.wire import report

        payload = report.encode_state(
            True,
            self.fw,
            p.name if p else None,
            p.version if p else None,
            p.hash if p else None,
            self.boot_id,
            backlog,
            self.wall.synced,
            self.wall.anchor(),
            last_seq or None,
            extra,
            self.mpy,
        )
        drop(REPORTS)
        if self.link.publish(self.topics[message.STATE], payload, 1, True):
            self.state_at = now
            self.state_dirty = False
        return True

    def will(self):
        """The MQTT last will: (topic, payload, retain, qos)."""
        return (self.topics[message.STATE], self.will_payload, True, 1)

    def _link_loop(self):
        from firmware.clock import sleep_ms

        while self.running:
            try:
                if not self.step_link():
                    sleep_ms(20)
            except Exception as e:  # the link thread must survive anything the network does
                print("orrery: link error:", type(e).__name__, e)
                self.link.close()
                sleep_ms(200)


def _rec_up_s(buf, off, count):
    # up_s of the newest record in the batch buffer (u32 little-endian, < 2**30)
    o = off + (count - 1) * _RECORD_SIZE
    return buf[o] | (buf[o + 1] << 8) | (buf[o + 2] << 16) | (buf[o + 3] << 24)
