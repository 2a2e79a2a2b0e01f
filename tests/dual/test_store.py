"""firmware/store.py on both runtimes: the reading log, its recovery, and zero allocation."""

import errno
import os
import struct

from _storekit import cuts, held, held_range
from _util import MICROPYTHON, allocates, raises

import firmware.store as store_mod
from firmware.records import CORRUPT, RECORD_SIZE, STORE_FULL, crc16
from firmware.store import Store
from shared.wire.constants import SEQ_MAX

if MICROPYTHON:
    _BASE = "/flash"  # fresh, empty and writable for this module
else:
    import tempfile

    _TMP = tempfile.TemporaryDirectory(prefix="orrery-store-")
    _BASE = _TMP.name

_count = [0]
_real_open = open
_ENOSPC = getattr(errno, "ENOSPC", 28)  # MicroPython's errno module lacks it; 28 on the ESP32


def _root():
    """A new, not yet existing directory for one store."""
    _count[0] += 1
    return "%s/s%d" % (_BASE, _count[0])


def _args(s, boot=7):
    # the reading appended as seq s: (boot_id, up_s, up_ms, value, channel)
    return boot, s * 10, s % 1000, (s * 37) % 65535 - 32767, s % 256


def _wire(s):
    a = _args(s)
    return struct.pack("<IHhB", a[1], a[2], a[3], a[4])


def _filled(seg_records, max_segments, n):
    # a new store of that geometry, in a new directory, holding seqs 1..n
    root = _root()
    st = Store(root, seg_records=seg_records, max_segments=max_segments)
    _fill(st, n)
    return root, st


def _fill(st, n, boot=7):
    for _ in range(n):
        s = st.last_seq + 1
        assert st.append(*_args(s, boot)) == s


def _expect(seqs, boot=7):
    return {s: (boot, _wire(s)) for s in seqs}


def _segs(root):
    return sorted(n for n in os.listdir(root) if n.endswith(".seg"))


def _read(path):
    with _real_open(path, "rb") as f:
        return f.read()


def _write(path, data):
    with _real_open(path, "wb") as f:
        f.write(data)


def _snapshot(root):
    return {n: _read(root + "/" + n) for n in os.listdir(root)}


def _restore(root, snap):
    for n in os.listdir(root):
        os.remove(root + "/" + n)
    for n in snap:
        _write(root + "/" + n, snap[n])


def test_crc16_is_ccitt_false():
    assert crc16(b"123456789", 0, 9) == 0x29B1
    assert crc16(b"xx123456789", 2, 11) == 0x29B1
    assert crc16(b"", 0, 0) == 0xFFFF


def test_append_read_ack_round_trip():
    st = Store(_root(), seg_records=4, max_segments=4)
    assert (st.last_seq, st.acked, st.backlog(), held_range(st)) == (0, 0, 0, None)
    buf = bytearray(9 * 16)
    assert list(st.read_batch(buf, 16)) == [0, 0, 1]
    _fill(st, 6)
    assert st.backlog() == 6 and held_range(st) == (1, 6)
    n, boot, first = st.read_batch(buf, 16)  # crosses from segment 1 into segment 2
    assert (n, boot, first) == (6, 7, 1)
    assert bytes(buf[: 6 * 9]) == b"".join(_wire(s) for s in range(1, 7))
    st.ack(3)
    assert st.acked == 3 and st.backlog() == 3
    n, boot, first = st.read_batch(buf, 2)
    assert (n, first) == (2, 4) and bytes(buf[:18]) == _wire(4) + _wire(5)
    n, boot, first = st.read_batch(buf, 3, 1)  # resend after seq 1
    assert (n, first) == (3, 2) and bytes(buf[:27]) == _wire(2) + _wire(3) + _wire(4)
    st.ack(6)
    assert st.backlog() == 0 and list(st.read_batch(buf, 16)) == [0, 0, 7]
    st.ack(2)  # never backwards
    assert st.acked == 6
    assert held_range(st) == (1, 6)  # acked data is kept for resends
    raises(ValueError, st.ack, 7)
    raises(ValueError, st.ack, -1)
    raises(ValueError, st.read_batch, buf, 17)
    raises(ValueError, st.read_batch, buf, 0)
    raises(ValueError, st.read_batch, buf, 1, -1)
    st.close()


def test_batch_is_one_boot():
    st = Store(_root(), seg_records=8, max_segments=2)
    _fill(st, 3, boot=7)
    _fill(st, 2, boot=8)
    buf = bytearray(9 * 10)
    assert list(st.read_batch(buf, 10)) == [3, 7, 1]
    st.ack(3)
    assert list(st.read_batch(buf, 10)) == [2, 8, 4]
    assert bytes(buf[:18]) == _wire(4) + _wire(5)
    st.close()


def test_full_store_drops_oldest_unacked_segment_and_reports_exact_range():
    root, st = _filled(4, 3, 12)
    st.ack(2)
    assert st.losses() == []
    _fill(st, 1)  # needs a 4th segment: 1..4 goes, 3..4 were not acked
    assert len(_segs(root)) == 3
    assert st.losses() == [(3, 4, STORE_FULL)]  # hands the entry out
    assert held_range(st) == (5, 13) and st.backlog() == 9
    buf = bytearray(9 * 4)
    assert list(st.read_batch(buf, 4)) == [4, 7, 5]
    _fill(st, 4)  # drops 5..8: a new entry, the handed-out one is not extended
    assert st.losses() == [(3, 4, STORE_FULL), (5, 8, STORE_FULL)]
    st.losses_reported(1)
    _fill(st, 4)  # drops 9..12
    assert st.losses() == [(5, 8, STORE_FULL), (9, 12, STORE_FULL)]
    st.losses_reported(2)
    assert st.losses() == []
    raises(ValueError, st.losses_reported, 1)
    st.close()


def test_unhanded_adjacent_losses_merge():
    st = Store(_root(), seg_records=2, max_segments=2)
    _fill(st, 9)  # drops 1..2, 3..4 and 5..6 without anyone looking
    assert st.losses() == [(1, 6, STORE_FULL)]
    st.close()


def test_acked_segments_are_kept_then_dropped_silently():
    root, st = _filled(4, 2, 8)
    st.ack(8)
    assert held_range(st) == (1, 8) and len(_segs(root)) == 2
    _fill(st, 4)
    assert st.losses() == [] and held_range(st) == (5, 12) and st.backlog() == 4
    st.close()


def test_resend_of_a_partly_dropped_range():
    st = Store(_root(), seg_records=3, max_segments=2)
    _fill(st, 10)  # 1..6 dropped unacked, 7..10 held
    assert st.losses() == [(1, 6, STORE_FULL)]
    buf = bytearray(9 * 8)
    assert list(st.read_range(buf, 2, 8)) == [2, 7, 7]  # 2..6 gone
    assert bytes(buf[:18]) == _wire(7) + _wire(8)
    assert list(st.read_range(buf, 1, 3)) == [0, 0, 4]  # all gone
    assert list(st.read_range(buf, 9, 20)) == [2, 7, 9]
    small = bytearray(9)
    assert list(st.read_range(small, 7, 9)) == [1, 7, 7]
    raises(ValueError, st.read_range, buf, 0, 3)
    raises(ValueError, st.read_range, buf, 5, 4)
    raises(ValueError, st.read_range, bytearray(8), 7, 9)
    st.close()


def test_cursor_survives_reopen_and_rotation():
    root, st = _filled(8, 4, 20)
    st.ack(5)
    st.close()
    st = Store(root, seg_records=8, max_segments=4)
    assert st.acked == 5 and st.backlog() == 15
    buf = bytearray(9 * 4)
    assert list(st.read_batch(buf, 4)) == [4, 7, 6]
    st.ack(3)
    assert st.acked == 5
    _fill(st, 60)
    for s in range(6, 81):  # 75 acks: the cursor log is rewritten twice
        st.ack(s)
    assert len(_read(root + "/cursor.log")) <= 32 * 7
    del st  # no close: as after a power cut
    st = Store(root, seg_records=8, max_segments=4)
    assert st.acked == 80 and st.last_seq == 80
    st.close()


def test_losses_survive_reopen():
    root, st = _filled(2, 2, 3)
    st.ack(1)
    _fill(st, 2)  # drops 1..2, of which 2 was not acked
    assert st.losses() == [(2, 2, STORE_FULL)]
    _fill(st, 2)  # drops 3..4: a second entry, as the first was handed out
    assert st.losses() == [(2, 2, STORE_FULL), (3, 4, STORE_FULL)]
    st.close()
    st = Store(root, seg_records=2, max_segments=2)
    assert st.losses() == [(2, 2, STORE_FULL), (3, 4, STORE_FULL)]
    assert st.last_seq == 7 and st.acked == 1
    st.losses_reported(1)
    st.close()
    st = Store(root, seg_records=2, max_segments=2)
    assert st.losses() == [(3, 4, STORE_FULL)]
    st.losses_reported(1)
    st.close()
    st = Store(root, seg_records=2, max_segments=2)
    assert st.losses() == [] and "loss.dat" not in os.listdir(root)
    st.close()


def test_reopen_continues_seq_in_a_new_segment():
    root, st = _filled(4, 8, 5)
    st.close()
    st = Store(root, seg_records=4, max_segments=8)
    assert st.last_seq == 5 and held_range(st) == (1, 5) and len(_segs(root)) == 2
    assert st.append(*_args(6)) == 6
    assert len(_segs(root)) == 3  # never appends to the previous boot's segment
    st = Store(root, seg_records=4, max_segments=8)  # the last one not closed: a power cut
    assert held(st) == _expect(range(1, 7))
    assert Store(root, seg_records=4, max_segments=8).last_seq == 6  # opening adds no files
    assert len(_segs(root)) == 3
    st.close()


def test_seq_space_ends_below_2_pow_30():
    root = _root()
    Store(root).close()
    entry = bytearray(struct.pack("<BBII", 0x4C, 1, SEQ_MAX - 1, SEQ_MAX - 1) + b"..")
    c = crc16(entry, 0, 10)
    entry[10] = c & 0xFF
    entry[11] = c >> 8
    _write(root + "/loss.dat", entry)  # a reported loss is evidence of seqs used
    st = Store(root)
    assert st.losses() == [(SEQ_MAX - 1, SEQ_MAX - 1, STORE_FULL)]
    assert st.last_seq == SEQ_MAX - 1
    assert st.append(*_args(1)) == SEQ_MAX
    e = raises(ValueError, st.append, *_args(1))
    assert "exhausted" in str(e)
    st.close()


def test_constructor_validation():
    e = raises(ValueError, Store, "")
    assert "root" in str(e)
    raises(ValueError, Store, "/")
    raises(ValueError, Store, 5)
    for bad in (0, 65536, "4", True, 2.0):
        e = raises(ValueError, Store, _root(), bad)
        assert "seg_records" in str(e)
    for bad in (0, 10000, None, False):
        e = raises(ValueError, Store, _root(), 4, bad)
        assert "max_segments" in str(e)
    raises(OSError, Store, _BASE + "/missing/parent")


def test_append_validation_keeps_store_usable():
    st = Store(_root(), seg_records=4, max_segments=2)
    _fill(st, 1)
    good = [7, 1, 2, 3, 4]
    for i, bad in (
        (0, 0),
        (0, SEQ_MAX + 1),
        (1, -1),
        (2, 1000),
        (3, 32768),
        (3, -32768),
        (3, True),
        (4, 256),
        (4, "1"),
    ):
        args = list(good)
        args[i] = bad
        raises(ValueError, st.append, *args)
    assert st.append(SEQ_MAX, SEQ_MAX, 999, -32767, 255) == 2
    assert st.append(1, 0, 0, 32767, 0) == 3
    buf = bytearray(27)
    assert list(st.read_batch(buf, 3)) == [1, 7, 1]
    assert list(st.read_batch(buf, 3, 1)) == [1, SEQ_MAX, 2]
    assert bytes(buf[:9]) == struct.pack("<IHhB", SEQ_MAX, 999, -32767, 255)
    st.close()


class _FullFs:
    """Wraps a file: while ``state[0]`` is "full", a write puts 7 bytes on flash, then fails."""

    state = ["ok"]

    def __init__(self, f):
        self.f = f

    def write(self, b):
        if self.state[0] == "full":
            self.f.write(bytes(b)[:7])
            raise OSError(_ENOSPC, "No space left on device")
        return self.f.write(b)

    def flush(self):
        return self.f.flush()

    def close(self):
        return self.f.close()

    def seek(self, off):
        return self.f.seek(off)

    def readinto(self, b):
        return self.f.readinto(b)

    def read(self):
        return self.f.read()


def _full_fs_open(path, mode="r", *args):
    if _FullFs.state[0] == "full" and "w" in mode and "nocreate" in _FullFs.state:
        raise OSError(_ENOSPC, "No space left on device")
    return _FullFs(_real_open(path, mode, *args))


def test_full_filesystem_refuses_the_record_then_recovers():
    root = _root()
    store_mod.open = _full_fs_open
    try:
        st = Store(root, seg_records=4, max_segments=8)
        _fill(st, 5)
        _FullFs.state[:] = ["full"]
        e = raises(OSError, st.append, *_args(6))
        assert e.errno == _ENOSPC
        assert st.last_seq == 5 and len(_segs(root)) == 2
        raises(OSError, st.append, *_args(6))  # a fresh segment, its first write fails
        assert len(_segs(root)) == 2  # and the empty segment is removed again
        _FullFs.state[:] = ["full", "nocreate"]
        raises(OSError, st.append, *_args(6))  # no new file either
        _FullFs.state[:] = ["ok"]
        _fill(st, 3)
        assert st.last_seq == 8
        assert held(st) == _expect(range(1, 9))
        st.ack(8)
    finally:
        _FullFs.state[:] = ["ok"]
        store_mod.open = _real_open
    st = Store(root, seg_records=4, max_segments=8)  # segment 2 ends in a torn record
    assert held(st) == _expect(range(1, 9))
    assert st.losses() == [] and st.corrupt == 0 and st.acked == 8 and st.last_seq == 8
    st.close()


def _powerloss_store():
    root, st = _filled(3, 4, 8)  # segments 1..3, 4..6, 7..8
    st.ack(2)
    st.close()
    return root


def test_power_loss_at_every_byte_of_the_last_segment():
    root = _powerloss_store()
    snap = _snapshot(root)
    last = _segs(root)[-1]
    for cut in cuts(root, snap, last):
        st = Store(root, seg_records=3, max_segments=4)
        whole = 6 + cut // RECORD_SIZE
        assert st.last_seq == whole, cut
        assert held(st) == _expect(range(1, whole + 1)), cut
        assert st.losses() == [] and st.corrupt == 0 and st.acked == 2
        assert st.append(*_args(whole + 1)) == whole + 1
        assert held(st) == _expect(range(1, whole + 2)), cut
        st.close()


def test_a_flipped_byte_loses_only_that_record():
    root = _powerloss_store()
    snap = _snapshot(root)
    seg = _segs(root)[1]  # seqs 4..6: flip inside 5
    for off in range(RECORD_SIZE, 2 * RECORD_SIZE):
        _restore(root, snap)
        data = bytearray(snap[seg])
        data[off] ^= 0xFF
        _write(root + "/" + seg, data)
        st = Store(root, seg_records=3, max_segments=4)
        assert st.corrupt == 1, off
        assert st.losses() == [(5, 5, CORRUPT)], off
        assert held(st) == _expect([1, 2, 3, 4, 6, 7, 8]), off
        assert st.last_seq == 8 and st.append(*_args(9)) == 9
        buf = bytearray(9 * 8)
        assert list(st.read_batch(buf, 8)) == [2, 7, 3]  # stops at the gap
        st.ack(4)
        assert list(st.read_batch(buf, 8)) == [4, 7, 6]  # skips the known bad record
        assert st.losses() == [(5, 5, CORRUPT)] and st.corrupt == 1
        st.close()


def test_torn_cursor_log_and_loss_file():
    root, st = _filled(2, 2, 7)  # drops 1..2 and 3..4
    for s in (5, 6, 7):
        st.ack(s)
    st.close()
    snap = _snapshot(root)
    cur = snap["cursor.log"]
    assert len(cur) == 21
    for cut in cuts(root, snap, "cursor.log"):
        st = Store(root, seg_records=2, max_segments=2)
        assert st.acked == (0, 5, 6, 7)[cut // 7], cut
        if st.acked < 6:
            st.ack(6)  # rewrites the log: never appends after a torn entry
            st.close()
            assert Store(root, seg_records=2, max_segments=2).acked == 6, cut
        st.close()
    loss = snap["loss.dat"]
    assert len(loss) == 12  # the adjacent drops merged into one entry
    for cut in cuts(root, snap, "loss.dat"):
        st = Store(root, seg_records=2, max_segments=2)
        want = [(1, 4, STORE_FULL)] if cut == 12 else []
        assert st.losses() == want, cut
        st.close()


def mp_test_append_allocates_nothing():
    st = Store(_root(), seg_records=40, max_segments=2)
    st.append(7, 1, 2, 3, 4)  # opens the segment
    for _ in range(10):
        assert not allocates(lambda: st.append(7, 123456, 999, -32767, 255))
    assert not allocates(lambda: st.append(SEQ_MAX, SEQ_MAX, 0, 32767, 0))
    assert st.last_seq == 12
    st.close()


def mp_test_read_batch_allocates_nothing():
    st = Store(_root(), seg_records=40, max_segments=2)
    _fill(st, 30)
    buf = bytearray(9 * 8)
    frame = bytearray(14 + 9 * 8)
    records = memoryview(frame)[14:]  # batch records right after the wire header
    st.read_batch(buf, 8)  # opens the segment for reading
    assert not allocates(lambda: st.read_batch(buf, 8))
    assert not allocates(lambda: st.read_batch(records, 8))
    assert bytes(frame[14:23]) == _wire(1)
    st.ack(8)
    assert not allocates(lambda: st.read_batch(buf, 8))
    assert not allocates(lambda: st.read_batch(buf, 8, 3))
    assert not allocates(lambda: st.read_range(buf, 20, 30))
    assert list(st.read_batch(buf, 8)) == [8, 7, 9]
    assert bytes(buf) == b"".join(_wire(s) for s in range(9, 17))
    st.ack(30)
    assert not allocates(lambda: st.read_batch(buf, 8))
    st.close()
