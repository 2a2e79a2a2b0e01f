"""firmware/backoff.py on CPython and on MicroPython: bounds, growth, cap, reset."""

from _util import MICROPYTHON, raises

from firmware.backoff import MAX_MS, Backoff, default_rand, int30

TOP = (1 << 30) - 1  # the largest small int on a 32-bit MicroPython


def lcg(seed):
    """A seeded deterministic rand() in [0, 2**30)."""
    s = [seed]

    def rand():
        s[0] = (s[0] * 1103515245 + 12345) & 0x3FFFFFFF
        return s[0]

    return rand


def fixed(*values):
    """A rand() that returns ``values`` in turn, forever."""
    i = [0]

    def rand():
        v = values[i[0] % len(values)]
        i[0] += 1
        return v

    return rand


def test_ceiling_doubles_then_caps():
    b = Backoff(100, 1000, rand=fixed(TOP))
    ceilings = []
    for _ in range(8):
        ceilings.append(b.ceiling_ms)
        b.next_delay_ms()
    assert ceilings == [100, 200, 400, 800, 1000, 1000, 1000, 1000]
    assert b.attempt == 4  # stops counting at the cap


def test_delays_span_zero_to_ceiling():
    # rand() % (ceiling + 1): 0 gives 0, ceiling gives the ceiling itself
    b = Backoff(100, 1000, rand=fixed(0, 200, 0, 800))
    assert [b.next_delay_ms() for _ in range(4)] == [0, 200, 0, 800]


def test_seeded_delays_bounded_and_repeatable():
    a = Backoff(50, 5000, rand=lcg(7))
    b = Backoff(50, 5000, rand=lcg(7))
    da = [a.next_delay_ms() for _ in range(200)]
    assert da == [b.next_delay_ms() for _ in range(200)]
    ceiling = 50
    for d in da:
        assert 0 <= d <= ceiling
        ceiling = min(5000, ceiling * 2)
    assert max(da[20:]) > 2500  # at the cap the delays use the whole range
    assert len(set(da[20:])) > 150  # jittered, not a constant


def test_reset_starts_again_from_base():
    b = Backoff(10, 10000, rand=lcg(1))
    for _ in range(20):
        b.next_delay_ms()
    assert b.ceiling_ms == 10000
    b.reset()
    assert b.attempt == 0 and b.ceiling_ms == 10
    assert 0 <= b.next_delay_ms() <= 10
    assert b.ceiling_ms == 20


def test_largest_cap_stays_small_int():
    b = Backoff(1, MAX_MS, rand=fixed(TOP, TOP - 1, 0))
    for _ in range(100):
        d = b.next_delay_ms()
        assert 0 <= d <= MAX_MS
        assert b.ceiling_ms <= MAX_MS
    assert b.ceiling_ms == MAX_MS and b.attempt == 30
    assert MAX_MS + 1 <= TOP


def test_rejects_bad_bounds():
    raises(ValueError, Backoff, 0, 100)
    raises(ValueError, Backoff, 200, 100)
    raises(ValueError, Backoff, 1, MAX_MS + 1)


def test_int30_keeps_the_low_30_bits():
    assert int30(b"\xff\xff\xff\xff") == TOP
    assert int30(b"\x40\x00\x00\x00") == 0
    assert int30(b"\x01\x02\x03\x04") == 0x01020304


def test_default_rand_is_a_30_bit_int():
    try:
        vals = [default_rand() for _ in range(64)]
    except OSError:
        # The WASI runtime has no entropy source for os.urandom; an ESP32 has its hardware RNG.
        assert MICROPYTHON
        return
    for v in vals:
        assert 0 <= v <= TOP
    assert len(set(vals)) > 60
    assert 0 <= Backoff().next_delay_ms() <= 500
