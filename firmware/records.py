"""The reading store's files on flash: their byte layouts, magics and names, and the CRC that
seals every record and entry (``firmware.store`` writes and reads them, ``firmware.recover``
rebuilds the store's state from them after a reboot or a power cut).

Files under ``root`` (all integers little-endian, CRC = CRC-16/CCITT-FALSE)
---------------------------------------------------------------------------
``NNNNNNNN.seg``  segments (decimal file number, rising). Up to ``seg_records`` records of
    20 bytes: magic u8 (0xA7), seq u32, boot_id u32, up_s u32, up_ms u16, value i16,
    channel u8, CRC u16 of the 18 bytes before it. Bytes 9..17 are exactly one record of the
    readings-batch wire format (``<IHhB``). A segment is written by one boot only, so slot i
    of a segment holds seq ``base + i``, and each segment starts where the previous one ended.
``cursor.log``    ack cursor, 7-byte entries appended per ack: magic u8 (0xC5), seq u32,
    CRC u16. The largest valid entry wins. Every 32 acks (or after a torn entry) it is
    replaced by one entry (``cursor.tmp`` + rename), so it stays under 240 bytes.
``loss.dat``      pending loss reports, 12-byte entries: magic u8 (0x4C), reason u8
    (1 store_full, 2 corrupt), first u32, last u32, CRC u16. Rewritten whole on every change
    (``loss.tmp`` + rename); absent when nothing is pending.
"""

from shared import const

RECORD_SIZE = const(20)  # a reading record
_MAGIC = const(0xA7)  # a reading record
_CMAGIC = const(0xC5)  # a cursor entry
_LMAGIC = const(0x4C)  # a loss entry
_CSIZE = const(7)  # a cursor entry
_LSIZE = const(12)  # a loss entry
_CROTATE = const(32)  # cursor entries before cursor.log is rewritten as one

CURSOR = "cursor.log"
CURSOR_TMP = "cursor.tmp"
LOSS = "loss.dat"
LOSS_TMP = "loss.tmp"
STORE_FULL = "store_full"  # loss reasons
CORRUPT = "corrupt"


# CRC-16/CCITT-FALSE four bits at a time: _T4[n] is the CRC register's update for nibble n
# (a 16-entry table instead of 256: 80 bytes of RAM instead of 528).
_T4 = (
    0x0000, 0x1021, 0x2042, 0x3063, 0x4084, 0x50A5, 0x60C6, 0x70E7,
    0x8108, 0x9129, 0xA14A, 0xB16B, 0xC18C, 0xD1AD, 0xE1CE, 0xF1EF,
)  # fmt: skip


def crc16(buf, start, end):
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) of ``buf[start:end]``. Allocates nothing."""
    c = 0xFFFF
    while start < end:  # few locals: a larger frame would be a heap allocation per call
        c ^= buf[start] << 8
        c = ((c << 4) & 0xFFFF) ^ _T4[c >> 12]
        c = ((c << 4) & 0xFFFF) ^ _T4[c >> 12]
        start += 1
    return c


def get30(b, o):
    """The u32 little-endian at ``b[o:o + 4]``, or -1 if it is 2**30 or more (only a damaged
    entry holds one, and it would be a big int)."""
    if b[o + 3] >= 0x40:
        return -1
    return b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)


def seal(b, o, n):
    """Write the CRC of ``b[o:o + n]`` after it, little-endian."""
    c = crc16(b, o, o + n)
    b[o + n] = c & 0xFF
    b[o + n + 1] = c >> 8


def sealed(b, o, n):
    """True if the CRC after ``b[o:o + n]`` is right."""
    return crc16(b, o, o + n) == b[o + n] | (b[o + n + 1] << 8)
