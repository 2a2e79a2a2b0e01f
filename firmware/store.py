"""Flash-backed log of accepted readings. A reading counts as taken only once ``append`` has
returned its sequence number; the uplink reads batches and acks them after the broker's PUBACK.

The files and their byte layouts are ``firmware.records``'.

Defaults: 204 records per segment (4080 bytes, one 4 KiB LittleFS block) and 64 segments:
about 255 KiB of the DevKitC's 2 MiB filesystem, holding 13056 readings.

Flash wear: each reading costs one 20-byte append and a flush, never a file rewrite. On
LittleFS that flush is a commit: the file's partly filled tail block is copied to a fresh
block (copy-on-write) and a small metadata entry is written, so a reading costs about one
block erase, which LittleFS's wear levelling spreads over the whole partition (at one
reading per second, roughly 170 erases per block per day on a 512-block partition). Grouping
readings per flush would cut that, but a power cut would then lose readings that had already
counted as taken, so this store does not.

Power loss: a cut at any byte of any write loses at most the record being written. On open
the store validates every record (magic, CRC, seq), ignores a torn tail and always appends
to a new segment. A bad record elsewhere is skipped, counted in ``corrupt`` and, if not yet
acked, reported as a "corrupt" loss. A full-length bad record at the very end of the log is
also treated as corrupt and its seq is not reused: its reading may already have been sent.

Allocation: ``append`` allocates nothing except when it starts a new segment (a file object,
and dropping the oldest segment) or handles a write error. ``read_batch`` and ``read_range``
allocate nothing while they read from a segment whose file they already have open (a
segment that has grown since then is reopened), and they return one 3-item list that is
reused by every call: unpack it straight away.
"""

import errno
import os

from firmware.records import (
    CORRUPT,
    CURSOR,
    CURSOR_TMP,
    LOSS,
    LOSS_TMP,
    STORE_FULL,
    get30,
    seal,
    sealed,
)
from shared import const
from shared.wire.message import put30

# Copied from shared/wire/constants.py by python -m tools.dev.consts: edit them there.
_SEQ_MAX = const(0x3FFFFFFF)  # 2**30 - 1, the largest small int on a 32-bit MicroPython
_WIRE_SIZE = const(9)  # = RECORD_SIZE

# Copied from firmware/records.py by python -m tools.dev.consts: edit them there.
_CMAGIC = const(0xC5)  # a cursor entry
_CROTATE = const(32)  # cursor entries before cursor.log is rewritten as one
_CSIZE = const(7)  # a cursor entry
_LMAGIC = const(0x4C)  # a loss entry
_LSIZE = const(12)  # a loss entry
_MAGIC = const(0xA7)  # a reading record
_RECORD_SIZE = const(20)  # a reading record

_SEG_RECORDS = const(204)
_MAX_SEGMENTS = const(64)
_MAX_LOSSES = const(32)
_MAX_BAD = const(64)
_CHUNK = const(16)  # records per read


def _record_ok(c, j, s):
    # a valid record at c[j:] holding seq s
    return (
        c[j] == _MAGIC
        and c[j + 1] == s & 0xFF
        and c[j + 2] == (s >> 8) & 0xFF
        and c[j + 3] == (s >> 16) & 0xFF
        and c[j + 4] == s >> 24
        and sealed(c, j, 18)
    )


def _copy_wire(buf, o, c, j):
    # buf[o:o + 9] = the wire bytes of the record at c[j:] (c[j + 9:j + 18]), with no slices
    end = o + _WIRE_SIZE
    j += 9
    while o < end:
        buf[o] = c[j]
        o += 1
        j += 1


class Store:
    """The reading log in directory ``root`` (created if missing; its parent must exist).

    ``seg_records`` records per segment file and at most ``max_segments`` files bound the
    size. Opening recovers the log from flash (``firmware.recover``, imported for that only).
    Seqs start at 1. ``last_seq`` is the newest seq stored (or acked, or reported lost) and
    ``acked`` the seq up to which every record has been delivered; both are 0 while there is
    none, and both are read-only.
    """

    def __init__(self, root, seg_records=_SEG_RECORDS, max_segments=_MAX_SEGMENTS):
        if not isinstance(root, str) or not root.rstrip("/"):
            raise ValueError("root must be a directory path such as '/store'")
        if type(seg_records) is not int or not 1 <= seg_records <= 65535:
            raise ValueError("seg_records must be an int in [1, 65535]")
        if type(max_segments) is not int or not 1 <= max_segments <= 9999:
            raise ValueError("max_segments must be an int in [1, 9999]")
        self._root = root.rstrip("/")
        self._segrec = seg_records
        self._maxseg = max_segments
        self._nums = []  # per held segment, oldest first: file number,
        self._bases = []  # seq of slot 0 (-1 if unknown: every record in it is bad),
        self._counts = []  # and slots in use
        self._next_num = 1
        self.last_seq = 0
        self.acked = 0
        self._wf = None  # segment being appended to (always the newest)
        self._rf = None  # segment being read, and its number and count when opened
        self._rf_num = -1
        self._rf_n = -1
        self._rs = self._rmax = self._rlast = 0  # scan state of _read
        self._rj = self._rgot = 0  # next record's offset in _chunk, and bytes read into it
        self._cf = None
        self._cn = 0  # entries in cursor.log; _CROTATE forces a rewrite
        self._losses = []
        self._handed = 0  # losses given out by losses(): never merge into those
        self._bad = []  # known corrupt seqs (at most _MAX_BAD), so each is reported once
        self.corrupt = 0  # corrupt records found since open (recovery and reads)
        self._rec = bytearray(_RECORD_SIZE)
        self._centry = bytearray(_CSIZE)
        self._chunk = bytearray(_CHUNK * _RECORD_SIZE)
        self._res = [0, 0, 0]
        from firmware import recover

        recover.recover(self)

    # --- public ------------------------------------------------------------------------------

    def append(self, boot_id, up_s, up_ms, value, channel):
        """Store one reading durably (written and flushed) and return its seq.

        ``boot_id`` in [1, 2**30), ``up_s`` in [0, 2**30), ``up_ms`` in [0, 999], ``value`` in
        [-32767, 32767], ``channel`` in [0, 255]. If the write fails (e.g. OSError ENOSPC on a
        full filesystem) the reading is refused with that error, the seq is not used, and
        the next append starts a new segment. Allocates nothing unless it starts a segment.
        """
        # Split in small methods: a call frame over ~11 words (locals, stack and the try
        # block's) is a heap allocation on MicroPython, on every call.
        self._head(boot_id, up_s, up_ms)
        self._tail(value, channel)
        return self._commit()

    def _head(self, boot_id, up_s, up_ms):
        if not (type(boot_id) is int and 1 <= boot_id <= _SEQ_MAX):
            raise ValueError("boot_id must be an int in [1, 2**30)")
        if not (type(up_s) is int and 0 <= up_s <= _SEQ_MAX):
            raise ValueError("up_s must be an int in [0, 2**30)")
        if not (type(up_ms) is int and 0 <= up_ms <= 999):
            raise ValueError("up_ms must be an int in [0, 999]")
        r = self._rec
        put30(r, 5, boot_id)
        put30(r, 9, up_s)
        r[13] = up_ms & 0xFF
        r[14] = up_ms >> 8

    def _tail(self, value, channel):
        if not (type(value) is int and -32767 <= value <= 32767):
            raise ValueError("value must be an int in [-32767, 32767]")
        if not (type(channel) is int and 0 <= channel <= 255):
            raise ValueError("channel must be an int in [0, 255]")
        r = self._rec
        r[15] = value & 0xFF
        r[16] = (value >> 8) & 0xFF
        r[17] = channel

    def _commit(self):
        s = self.last_seq + 1
        if s > _SEQ_MAX:
            raise ValueError("sequence numbers exhausted (2**30 - 1 reached)")
        if self._wf is None or self._counts[-1] >= self._segrec:
            self._roll()
        r = self._rec
        r[0] = _MAGIC
        put30(r, 1, s)
        seal(r, 0, 18)
        self._write(r)
        self.last_seq = s
        self._counts[-1] += 1
        return s

    def _write(self, r):
        try:
            if self._wf.write(r) != _RECORD_SIZE:
                raise OSError(errno.EIO, "short write")
            self._wf.flush()
        except Exception:
            self._write_failed()
            raise

    def ack(self, seq):
        """Mark every record up to ``seq`` delivered, durably. Lower seqs are ignored."""
        if type(seq) is not int or seq < 0:
            raise ValueError("seq must be an int >= 0")
        if seq > self.last_seq:
            raise ValueError("cannot ack seq {} beyond last_seq {}".format(seq, self.last_seq))
        if seq <= self.acked:
            return
        e = self._centry
        e[0] = _CMAGIC
        put30(e, 1, seq)
        seal(e, 0, 5)
        if self._cn >= _CROTATE:
            self._close_cursor()
            self._write_file(CURSOR_TMP, e)
            self._replace(CURSOR_TMP, CURSOR)
            self._cn = 1
        else:
            try:
                if self._cf is None:
                    self._cf = open(self._path(CURSOR), "ab", 0)
                if self._cf.write(e) != _CSIZE:
                    raise OSError(errno.EIO, "short write")
                self._cf.flush()
            except Exception:
                self._close_cursor()
                self._cn = _CROTATE  # never append after a possibly torn entry
                raise
            self._cn += 1
        self.acked = seq

    def read_batch(self, buf, max_count, after_seq=None):
        """Copy up to ``max_count`` records that follow the ack cursor (or ``after_seq``, for a
        resend) into ``buf``, 9 wire bytes each at offset i*9; return ``[count, boot_id,
        first_seq]``.

        The records are one boot's, with contiguous seqs from ``first_seq``: the batch stops
        at a boot change, a gap or the newest record. Corrupt records at its start are
        skipped (and reported). With nothing to read, count and boot_id are 0 and first_seq
        is last_seq + 1. The returned list is reused by the next call.
        """
        if type(max_count) is not int or max_count < 1 or max_count * _WIRE_SIZE > len(buf):
            raise ValueError("max_count must be >= 1 and buf must hold max_count * 9 bytes")
        if after_seq is None:
            s = self.acked + 1
        elif type(after_seq) is int and 0 <= after_seq <= _SEQ_MAX:
            s = after_seq + 1
        else:
            raise ValueError("after_seq must be None or an int in [0, 2**30)")
        return self._read(buf, max_count, s, self.last_seq)

    def read_range(self, buf, first, last):
        """For a resend of seqs ``first``..``last``: like ``read_batch``, as many records as
        ``buf`` holds from the first one still held at or after ``first``.

        Returns ``[count, boot_id, first_seq]``: seqs ``first``..``first_seq - 1`` are gone
        (dropped or corrupt); with count 0, first_seq is ``last + 1``: nothing of the range
        is held. Call again from ``first_seq + count`` for the rest.
        """
        if not (type(first) is int and type(last) is int and 1 <= first <= last <= _SEQ_MAX):
            raise ValueError("need ints with 1 <= first <= last < 2**30")
        n = len(buf) // _WIRE_SIZE  # few locals: a larger frame is a heap allocation
        if n < 1:
            raise ValueError("buf must hold at least one 9-byte record")
        if n > last - first:
            n = last - first + 1
        return self._read(buf, n, first, last)

    def backlog(self):
        """Number of records held and not yet acked (corrupt ones included)."""
        a = self.acked + 1
        t = 0
        for k in range(len(self._nums)):
            b = self._bases[k]
            e = b + self._counts[k]
            if b >= 0 and e > a:
                t += e - (b if b > a else a)
        return t

    def losses(self):
        """Loss reports not yet reported: a list of ``(first_seq, last_seq, reason)``, reason
        "store_full" (an unacked segment was dropped) or "corrupt" (a bad record)."""
        self._handed = len(self._losses)
        return list(self._losses)

    def losses_reported(self, n):
        """Forget the first ``n`` entries of ``losses()``: the uplink has sent them."""
        if type(n) is not int or not 0 <= n <= len(self._losses):
            raise ValueError("n must be an int in [0, {}]".format(len(self._losses)))
        if n:
            del self._losses[:n]
            self._handed = self._handed - n if self._handed > n else 0
            self._save_losses()

    def close(self):
        """Close the open files. Every stored record and ack is already on flash."""
        self._close_reader()
        self._close_cursor()
        f = self._wf
        self._wf = None
        if f is not None:
            f.close()

    # --- reading -----------------------------------------------------------------------------

    def _read(self, buf, max_count, s, last):
        # The scan is split in small methods that share its state in attributes (_rs, _rmax,
        # _rlast, _rj, _rgot): a call frame over 11 words is a heap allocation on MicroPython.
        res = self._res
        res[0] = 0
        res[1] = 0
        res[2] = last + 1
        self._rmax = max_count
        self._rlast = last
        self._rs = s
        k = 0
        while res[0] < max_count and self._rs <= last:
            k = self._read_seg_at(k)
            if k < 0 or not self._read_seg(buf, k):
                break
        return res

    def _read_seg_at(self, k):
        # index (from k on) of the segment to read seq _rs from, or -1 to end the batch;
        # with nothing read yet, _rs skips a gap to the next segment held
        bases = self._bases
        counts = self._counts
        s = self._rs
        while True:
            while k < len(bases) and (bases[k] < 0 or bases[k] + counts[k] <= s):
                k += 1
            if k == len(bases):
                return -1
            if bases[k] <= s:
                return k
            if self._res[0]:
                return -1
            s = self._rs = bases[k]
            if s > self._rlast:
                return -1

    def _read_seg(self, buf, k):
        # read segment k from seq _rs on; False if the batch ended at a record in it
        s = self._rs
        i = s - self._bases[k]
        self._reader(k).seek(i * _RECORD_SIZE)
        self._rgot = self._rj = 0
        while i < self._counts[k] and s <= self._rlast and self._res[0] < self._rmax:
            if not self._read_one(buf, s):
                return False
            s += 1
            i += 1
        self._rs = s
        return True

    def _read_one(self, buf, s):
        # take record s, the reader's next slot, into the batch; False if the batch ends
        # before it. A bad record ends a batch, or else it is skipped (and reported).
        j = self._next_slot()
        if j >= 0 and _record_ok(self._chunk, j, s):
            return self._add_record(buf, j, s)
        if self._res[0]:
            return False
        if self._found_bad(s):
            self._try_save_losses()
        return True

    def _next_slot(self):
        # offset in _chunk of the reader's next record (reading on as needed), or -1 if the
        # file ends before it
        j = self._rj
        if j + _RECORD_SIZE > self._rgot:
            self._rgot = self._rf.readinto(self._chunk) or 0
            j = 0
        self._rj = j + _RECORD_SIZE
        return j if j + _RECORD_SIZE <= self._rgot else -1

    def _add_record(self, buf, j, s):
        # the valid record s at _chunk[j:] joins the batch, unless it is another boot's
        res = self._res
        b = get30(self._chunk, j + 5)
        if res[0] == 0:
            res[1] = b
            res[2] = s
        elif b != res[1]:
            return False
        _copy_wire(buf, res[0] * _WIRE_SIZE, self._chunk, j)
        res[0] += 1
        return True

    def _try_save_losses(self):
        try:
            self._save_losses()
        except OSError:
            pass  # stays pending in RAM; saved with the next change

    def _reader(self, k):
        num = self._nums[k]
        if self._rf is None or self._rf_num != num or self._rf_n != self._counts[k]:
            # a reopen also covers LittleFS, where a handle does not see later appends
            self._close_reader()
            self._rf = open(self._seg_path(num), "rb")
            self._rf_num = num
            self._rf_n = self._counts[k]
        return self._rf

    def _close_reader(self):
        f = self._rf
        self._rf = None
        self._rf_num = -1
        if f is not None:
            f.close()

    # --- segments ----------------------------------------------------------------------------

    def _roll(self):
        f = self._wf
        self._wf = None
        if f is not None:
            f.close()
        if len(self._nums) >= self._maxseg:
            self._drop_oldest()
        num = self._next_num
        self._wf = open(self._seg_path(num), "wb", 0)
        self._next_num = num + 1
        self._nums.append(num)
        self._bases.append(self.last_seq + 1)
        self._counts.append(0)

    def _write_failed(self):
        f = self._wf
        self._wf = None
        try:
            f.close()
        except Exception:
            pass
        if self._counts[-1] == 0:
            self._bases.pop()
            self._counts.pop()
            self._remove(self._seg_name(self._nums.pop()))

    def _drop_oldest(self):
        num = self._nums.pop(0)
        base = self._bases.pop(0)
        n = self._counts.pop(0)
        if self._rf_num == num:
            self._close_reader()
        saved = True
        if base >= 0 and n:
            last = base + n - 1
            lo = base if base > self.acked else self.acked + 1
            if lo <= last:
                for x in sorted(self._bad):  # already reported as corrupt
                    if lo <= x <= last:
                        if x > lo:
                            self._add_loss(lo, x - 1, STORE_FULL)
                        lo = x + 1
                if lo <= last:
                    self._add_loss(lo, last, STORE_FULL)
                try:
                    self._save_losses()  # before the data goes: a cut here over-reports
                except OSError:
                    saved = False  # maybe the filesystem is full: free the segment first
            self._bad = [x for x in self._bad if x > last]
        os.remove(self._seg_path(num))
        if not saved:
            self._save_losses()

    # --- losses ------------------------------------------------------------------------------

    def _add_loss(self, a, z, reason):
        L = self._losses
        if len(L) > self._handed:
            f0, l0, r0 = L[-1]
            if (r0 == reason and l0 + 1 == a) or len(L) >= _MAX_LOSSES:
                # past _MAX_LOSSES this may also cover records that were not lost
                L[-1] = (f0 if f0 < a else a, l0 if l0 > z else z, r0)
                return
        L.append((a, z, reason))

    def _lost(self, s):
        for a, z, _ in self._losses:
            if a <= s <= z:
                return True
        return False

    def _found_bad(self, s):
        # count a corrupt record once; True if it was added to the losses
        if s in self._bad:
            return False
        self.corrupt += 1
        if len(self._bad) < _MAX_BAD:
            self._bad.append(s)
        if s > self.acked and not self._lost(s):
            self._add_loss(s, s, CORRUPT)
            return True
        return False

    def _save_losses(self):
        L = self._losses
        if not L:
            self._remove(LOSS)
            self._remove(LOSS_TMP)
            return
        b = bytearray(_LSIZE * len(L))
        o = 0
        for a, z, r in L:
            b[o] = _LMAGIC
            b[o + 1] = 1 if r == STORE_FULL else 2
            put30(b, o + 2, a)
            put30(b, o + 6, z)
            seal(b, o, 10)
            o += _LSIZE
        self._write_file(LOSS_TMP, b)
        self._replace(LOSS_TMP, LOSS)

    # --- files -------------------------------------------------------------------------------

    def _path(self, name):
        return self._root + "/" + name

    def _seg_name(self, num):
        return "%08d.seg" % num

    def _seg_path(self, num):
        return self._path(self._seg_name(num))

    def _close_cursor(self):
        f = self._cf
        self._cf = None
        if f is not None:
            f.close()

    def _write_file(self, name, data):
        f = open(self._path(name), "wb", 0)
        try:
            if f.write(data) != len(data):
                raise OSError(errno.EIO, "short write")
            f.flush()
        finally:
            f.close()

    def _replace(self, tmp, name):
        try:
            os.rename(self._path(tmp), self._path(name))
        except OSError:  # FAT refuses to rename onto an existing file
            self._remove(name)
            os.rename(self._path(tmp), self._path(name))

    def _remove(self, name):
        try:
            os.remove(self._path(name))
        except OSError:
            pass
