"""firmware/store.py under power loss and corruption, exhaustively (CPython only).

Every byte offset of the last segment, of the cursor log and of the loss file; one flipped byte
at every offset of records in several positions; a power cut at every byte of every write and
before every rename/remove of a workload that rolls, drops, acks, rotates and reports; and a
random-operation comparison against a small model.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import firmware.recover as recover_mod
import firmware.store as store_mod
from firmware.records import CORRUPT, RECORD_SIZE, STORE_FULL, crc16
from firmware.store import Store
from tests.dual._storekit import cuts, held, held_range


def args(s: int, boot: int = 7) -> tuple[int, int, int, int, int]:
    return boot, s * 3 + 1, (s * 7) % 1000, (s * 331) % 65535 - 32767, s % 256


def wire(s: int) -> bytes:
    a = args(s)
    return struct.pack("<IHhB", *a[1:])


def fill(store: Store, n: int, boot: int = 7) -> None:
    for _ in range(n):
        s = store.last_seq + 1
        assert store.append(*args(s, boot)) == s


def expect(seqs) -> dict[int, tuple[int, bytes]]:
    return {s: (7, wire(s)) for s in seqs}


def segs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.suffix == ".seg")


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in root.iterdir()}


def restore(root: Path, snap: dict[str, bytes]) -> None:
    for p in root.iterdir():
        p.unlink()
    for name, data in snap.items():
        (root / name).write_bytes(data)


SEG, MAXSEG = 8, 5


def open_store(root: Path) -> Store:
    return Store(str(root), seg_records=SEG, max_segments=MAXSEG)


@pytest.fixture
def five_segments(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """Seqs 1..40 in five full segments after 1..8 were dropped unacked; acked up to 12."""
    root = tmp_path / "log"
    store = open_store(root)
    fill(store, 48)
    store.ack(12)
    store.close()
    assert len(segs(root)) == MAXSEG
    return root, snapshot(root)


def test_power_loss_at_every_byte_of_the_last_segment(five_segments):
    root, snap = five_segments
    last = segs(root)[-1]
    assert len(snap[last]) == SEG * RECORD_SIZE
    for cut in cuts(str(root), snap, last):
        store = open_store(root)
        whole = 40 + cut // RECORD_SIZE
        assert store.last_seq == whole, cut
        assert held(store) == expect(range(9, whole + 1)), cut
        assert store.losses() == [(1, 8, STORE_FULL)], cut
        assert (store.corrupt, store.acked, store.backlog()) == (0, 12, whole - 12), cut
        files = segs(root)
        assert store.append(*args(whole + 1)) == whole + 1
        assert segs(root)[-1] > files[-1]  # always a new segment after a restart
        dropped = len(files) == MAXSEG  # then 9..16 went, and 13..16 were not acked
        losses = [(1, 8, STORE_FULL)] + ([(13, 16, STORE_FULL)] if dropped else [])
        store.close()
        again = open_store(root)
        assert again.last_seq == whole + 1 and again.losses() == losses, cut
        assert held(again) == expect(range(17 if dropped else 9, whole + 2)), cut
        again.close()


@pytest.mark.parametrize(
    "seq",
    [9, 17, 20, 24, 48],  # oldest held (acked); first, middle, last of a segment; newest
)
@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_one_flipped_byte_loses_only_that_record(five_segments, seq, mask):
    root, snap = five_segments
    name = segs(root)[(seq - 9) // SEG]
    base = ((seq - 9) // SEG) * SEG + 9
    for off in range((seq - base) * RECORD_SIZE, (seq - base + 1) * RECORD_SIZE):
        restore(root, snap)
        data = bytearray(snap[name])
        data[off] ^= mask
        (root / name).write_bytes(data)
        store = open_store(root)
        assert store.corrupt == 1, off
        bad = [(seq, seq, CORRUPT)] if seq > 12 else []  # acked: delivered, not lost
        assert store.losses() == [(1, 8, STORE_FULL)] + bad, off
        assert held(store) == expect(s for s in range(9, 49) if s != seq), off
        assert store.last_seq == 48 and store.acked == 12
        assert store.append(*args(49)) == 49  # a bad newest record's seq is not reused
        store.close()


def test_corrupt_record_already_acked_is_not_a_loss(five_segments):
    root, snap = five_segments
    data = bytearray(snap[segs(root)[0]])
    data[RECORD_SIZE + 5] ^= 0x10  # seq 10 <= acked 12
    (root / segs(root)[0]).write_bytes(data)
    store = open_store(root)
    assert store.corrupt == 1 and store.losses() == [(1, 8, STORE_FULL)]
    assert held(store) == expect(s for s in range(9, 49) if s != 10)


def test_single_record_segments_infer_a_bad_seq_from_neighbours(tmp_path):
    root = tmp_path / "log"
    store = Store(str(root), seg_records=1, max_segments=8)
    fill(store, 5)
    store.close()
    snap = snapshot(root)
    for seq in range(1, 6):
        restore(root, snap)
        name = segs(root)[seq - 1]
        data = bytearray(snap[name])
        data[7] ^= 0x04
        (root / name).write_bytes(data)
        store = Store(str(root), seg_records=1, max_segments=8)
        assert store.corrupt == 1
        # the first segment has no older neighbour to place it
        assert store.losses() == ([] if seq == 1 else [(seq, seq, CORRUPT)]), seq
        assert held(store) == expect(s for s in range(1, 6) if s != seq)
        assert store.last_seq == 5
        assert store.append(*args(6)) == 6
        store.close()


def test_bad_record_found_while_running_is_skipped_and_reported(five_segments):
    root, snap = five_segments
    store = open_store(root)
    name = segs(root)[2]  # seqs 25..32
    data = bytearray(snap[name])
    data[3 * RECORD_SIZE + 12] ^= 0x40  # seq 28, after the store has opened
    (root / name).write_bytes(data)
    store.ack(27)
    buf = bytearray(9 * 40)
    n, boot, first = store.read_batch(buf, 40)
    assert (n, first) == (20, 29)
    assert store.losses() == [(1, 8, STORE_FULL), (28, 28, CORRUPT)]
    assert store.corrupt == 1
    store.read_batch(buf, 40)  # reported once
    assert store.corrupt == 1 and len(store.losses()) == 2
    store.close()
    assert open_store(root).losses() == [(1, 8, STORE_FULL), (28, 28, CORRUPT)]


def test_torn_cursor_log_at_every_byte(tmp_path):
    root = tmp_path / "log"
    store = open_store(root)
    fill(store, 20)
    acks = [2, 3, 5, 8, 9, 10, 14, 15, 19, 20]
    for a in acks:
        store.ack(a)
    store.close()
    snap = snapshot(root)
    log = snap["cursor.log"]
    assert len(log) == 7 * len(acks)
    for cut in cuts(str(root), snap, "cursor.log"):
        store = open_store(root)
        want = acks[cut // 7 - 1] if cut >= 7 else 0
        assert store.acked == want, cut
        assert store.backlog() == 20 - want
        store.ack(20)
        store.close()
        assert open_store(root).acked == 20, cut
        if cut % 7:
            assert (root / "cursor.log").stat().st_size == 7  # rewritten, not appended to


def test_cursor_rewrite_cut_before_the_rename(tmp_path):
    root = tmp_path / "log"
    store = open_store(root)
    fill(store, 10)
    store.ack(4)
    store.close()
    entry_9 = _cursor_entry(9)
    for cut in range(8):
        (root / "cursor.tmp").write_bytes(entry_9[:cut])
        store = open_store(root)
        assert store.acked == (9 if cut == 7 else 4), cut
        assert not (root / "cursor.tmp").exists()
        store.close()
        if cut == 7:
            assert (root / "cursor.log").read_bytes() == entry_9
            (root / "cursor.log").write_bytes(_cursor_entry(4))
    (root / "cursor.log").unlink()
    (root / "cursor.tmp").write_bytes(entry_9)
    assert open_store(root).acked == 9


def _cursor_entry(seq: int) -> bytes:
    e = bytearray(7)
    e[0] = 0xC5
    e[1:5] = seq.to_bytes(4, "little")
    c = crc16(e, 0, 5)
    e[5:7] = c.to_bytes(2, "little")
    return bytes(e)


def test_torn_loss_file_at_every_byte(tmp_path):
    root = tmp_path / "log"
    store = Store(str(root), seg_records=2, max_segments=2)
    fill(store, 5)  # drops 1..2
    assert store.losses() == [(1, 2, STORE_FULL)]
    store.ack(3)
    fill(store, 2)  # drops 3..4: 4 is lost
    assert store.losses() == [(1, 2, STORE_FULL), (4, 4, STORE_FULL)]
    fill(store, 2)  # drops 5..6
    want = [(1, 2, STORE_FULL), (4, 4, STORE_FULL), (5, 6, STORE_FULL)]
    assert store.losses() == want
    store.close()
    snap = snapshot(root)
    data = snap["loss.dat"]
    assert len(data) == 36
    for cut in cuts(str(root), snap, "loss.dat"):
        store = Store(str(root), seg_records=2, max_segments=2)
        assert store.losses() == want[: cut // 12], cut
        assert store.last_seq == 9 and store.acked == 3
        store.close()
    # a cut while writing loss.tmp leaves loss.dat as it was
    for cut in range(len(data) + 1):
        restore(root, snap)
        (root / "loss.tmp").write_bytes(b"\x00" * cut)
        store = Store(str(root), seg_records=2, max_segments=2)
        assert store.losses() == want and not (root / "loss.tmp").exists()
        store.close()
    # a FAT-style replace cut between removing loss.dat and the rename
    restore(root, snap)
    (root / "loss.dat").rename(root / "loss.tmp")
    store = Store(str(root), seg_records=2, max_segments=2)
    assert store.losses() == want and (root / "loss.dat").exists()


# --- a power cut at every byte of every write ----------------------------------------------


class Cut(BaseException):
    """The power went: nothing after this reaches the flash."""


class Power:
    """Lets ``budget`` bytes of writes plus file operations through, then cuts."""

    def __init__(self, budget: int | None):
        self.budget = budget
        self.used = 0

    def spend(self, n: int) -> int:
        if self.budget is None:
            self.used += n
            return n
        k = min(n, self.budget)
        self.budget -= k
        self.used += k
        return k

    def op(self) -> None:
        if self.spend(1) == 0:
            raise Cut


class CutFile:
    def __init__(self, f, power: Power):
        self.f = f
        self.power = power

    def write(self, b) -> int:
        b = bytes(b)
        k = self.power.spend(len(b))
        self.f.write(b[:k])
        self.f.flush()
        if k < len(b):
            raise Cut
        return k

    def __getattr__(self, name):
        return getattr(self.f, name)


class CutOs:
    def __init__(self, power: Power):
        self.power = power

    def __getattr__(self, name):
        real = getattr(os, name)
        if name not in ("rename", "remove", "mkdir"):
            return real

        def op(*a):
            self.power.op()
            return real(*a)

        return op


class Workload:
    """Appends, acks and loss reports on a small store; records what was confirmed."""

    def __init__(self):
        self.returned: dict[int, tuple] = {}
        self.inflight: tuple[int, tuple] | None = None
        self.acked = 0
        self.ack_inflight = 0
        self.reported: list[tuple[int, int, str]] = []
        self.reporting: list[tuple[int, int, str]] = []

    def run(self, root: Path) -> None:
        store = Store(str(root), seg_records=4, max_segments=3)
        for i in range(1, 61):
            boot = 7 if i < 30 else 8
            s = store.last_seq + 1
            self.inflight = (s, args(s, boot))
            assert store.append(*args(s, boot)) == s
            self.returned[s] = args(s, boot)
            self.inflight = None
            if not 12 <= i < 26:  # falls behind for a while: unacked segments are dropped
                self.ack_inflight = i - 1
                store.ack(i - 1)
                self.acked = i - 1
            if i % 9 == 0:
                self.reporting = store.losses()
                store.losses_reported(len(self.reporting))
                self.reported += self.reporting
                self.reporting = []
        store.close()


def _cut_run(root: Path, budget: int | None) -> tuple[Workload, Power, bool]:
    power = Power(budget)
    work = Workload()
    real_open = store_mod.open if hasattr(store_mod, "open") else None
    store_mod.open = lambda p, m="r", *a: _open(p, m, power, *a)
    store_mod.os = recover_mod.os = CutOs(power)
    try:
        work.run(root)
        done = True
    except Cut:
        done = False
    finally:
        store_mod.os = recover_mod.os = os
        if real_open is None:
            del store_mod.open
        else:
            store_mod.open = real_open
    return work, power, done


def _open(path, mode, power: Power, *a):
    if "w" in mode or "a" in mode:
        power.op()
    return CutFile(open(path, mode, *a), power)


def _covered(s: int, ranges) -> bool:
    return any(a <= s <= z for a, z, _ in ranges)


def test_power_cut_at_every_byte_of_every_write(tmp_path):
    total = _cut_run(tmp_path / "full", None)[1].used
    assert total > 1000
    for budget in range(total):
        root = tmp_path / f"cut{budget}"
        work, _, done = _cut_run(root, budget)
        assert not done
        store = Store(str(root), seg_records=4, max_segments=3)
        got = held(store)
        last = max(work.returned, default=0)
        pending = store.losses()
        for s, (boot, data) in got.items():
            a = work.returned.get(s) or (
                work.inflight and work.inflight[0] == s and work.inflight[1]
            )
            assert a, (budget, s)
            assert (boot, data) == (a[0], struct.pack("<IHhB", *a[1:])), (budget, s)
        for s in work.returned:
            assert (
                s in got
                or s <= store.acked
                or _covered(s, pending)
                or _covered(s, work.reported)
                or _covered(s, work.reporting)
            ), (budget, s)
        assert work.acked <= store.acked <= max(work.acked, work.ack_inflight), budget
        assert store.last_seq == last or (store.last_seq == last + 1 and last + 1 in got), budget
        assert store.corrupt == 0 and all(r == STORE_FULL and z <= last for _, z, r in pending)
        assert not (root / "cursor.tmp").exists() and not (root / "loss.tmp").exists()
        # and it carries on
        n = store.last_seq + 1
        assert store.append(*args(n)) == n
        store.ack(n)
        store.close()
        again = Store(str(root), seg_records=4, max_segments=3)
        lo = held_range(again)[0]  # the append may have dropped the oldest segment
        assert again.acked == n, budget
        assert held(again) == {**{s: v for s, v in got.items() if s >= lo}, n: (7, wire(n))}
        again.close()


# --- random operations against a model ------------------------------------------------------


class Model:
    def __init__(self, seg: int, maxseg: int):
        self.seg, self.maxseg = seg, maxseg
        self.segments: list[list[tuple[int, int]]] = []  # (seq, boot)
        self.open = False
        self.seq = 0
        self.acked = 0
        self.lost: set[int] = set()

    def append(self, boot: int) -> int:
        if not self.open or len(self.segments[-1]) == self.seg:
            if len(self.segments) == self.maxseg:
                self.lost |= {s for s, _ in self.segments.pop(0) if s > self.acked}
            self.segments.append([])
            self.open = True
        self.seq += 1
        self.segments[-1].append((self.seq, boot))
        return self.seq

    def batch(self, max_count: int, after: int) -> tuple[int, int, int]:
        recs = [r for seg in self.segments for r in seg if r[0] > after]
        if not recs:
            return 0, 0, self.seq + 1
        first, boot = recs[0]
        n = 0
        for s, b in recs[:max_count]:
            if s != first + n or b != boot:
                break
            n += 1
        return n, boot, first


ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 12), st.integers(1, 3)),
        st.tuples(st.just("ack"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("read"), st.integers(1, 10), st.integers(-1, 40)),
        st.tuples(st.just("reopen"), st.just(0), st.just(0)),
        st.tuples(st.just("report"), st.just(0), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, seg=st.integers(1, 5), maxseg=st.integers(1, 4))
def test_random_operations_match_a_model(tmp_path_factory, ops, seg, maxseg):
    root = tmp_path_factory.mktemp("model") / "log"
    store = Store(str(root), seg_records=seg, max_segments=maxseg)
    model = Model(seg, maxseg)
    reported: set[int] = set()
    buf = bytearray(9 * 10)
    for op, a, b in ops:
        if op == "append":
            for _ in range(a):
                s = model.append(b)
                assert store.append(*args(s, b)) == s
        elif op == "ack":
            seq = min(a, model.seq)
            store.ack(seq)
            model.acked = max(model.acked, seq)
        elif op == "read":
            after = model.acked if b < 0 else min(b, model.seq)
            got = store.read_batch(buf, a, None if b < 0 else after)
            want = model.batch(a, after)
            assert tuple(got) == want
            for i in range(want[0]):
                assert bytes(buf[i * 9 : i * 9 + 9]) == wire(want[2] + i)
        elif op == "reopen":
            store.close()
            store = Store(str(root), seg_records=seg, max_segments=maxseg)
            model.open = False
        else:
            ls = store.losses()
            store.losses_reported(len(ls))
            reported |= {s for f, z, _ in ls for s in range(f, z + 1)}
        assert store.last_seq == model.seq and store.acked == model.acked
        pending = {s for f, z, _ in store.losses() for s in range(f, z + 1)}
        assert pending | reported == model.lost and not pending & reported
        want_held = [s for seg_ in model.segments for s, _ in seg_]
        assert held_range(store) == ((want_held[0], want_held[-1]) if want_held else None)
        assert store.backlog() == sum(1 for s in want_held if s > model.acked)
    store.close()
