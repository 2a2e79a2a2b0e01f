"""The link's overflow spool: incoming messages the node has no room for, kept on flash.

``UmqttLink`` admits incoming PUBLISHes by bytes (``budget``, firmware/link.py). One that does
not fit normally stays in the socket, unread, and TCP and the broker hold it. But a PUBLISH can
stand in the stream in front of a packet the link must read now: the PUBACK or SUBACK it waits
for, or a PINGRESP. Then the link reads the message past it into this spool instead of RAM: its
topic and payload are appended to one file, a piece of at most 512 bytes at a time, flushed,
and only then acknowledged. ``poll`` moves spooled messages, oldest first, into RAM as room frees, before
it reads anything newer from the socket, so the node sees every message once and in arrival
order. So a full budget never costs a link drop (the broker would send a will and a fleet's
health gate would count it) nor a message; QoS 1 stays: a message is acknowledged only once it
is on flash.

Records: u32 payload length, u16 topic length, the topic, the payload (little-endian). The
file is written anew when the spool is empty (so a file left by an earlier boot is forgotten:
what the board held in RAM is forgotten at a reboot too, and a pull after the reconnect brings
back every open command) and removed once every record was handed over.

Only the link thread imports this module, on the rare occasion it is needed, and drops it with
the reports (``firmware.REPORTS``).
"""

import os

from shared import const

MAX_BYTES = const(65536)  # past this the link drops the connection unacknowledged (last resort)


def put(link, op, n):
    """Read the rest of a PUBLISH (fixed header ``op``, remaining length ``n``) from the
    link's socket into the spool; acknowledge it (QoS 1) once it is on flash. OSError when the
    spool is full or the packet malformed (the link then drops the connection, unacknowledged)."""
    qos = (op >> 1) & 3
    if qos == 2 or n < 2:
        raise OSError("bad publish")
    if link._sp_end + n + 4 > MAX_BYTES:
        raise OSError("inbox full")
    b = link._exact(2)
    tl = b[0] << 8 | b[1]
    size = n - 2 - tl - 2 * qos
    if size < 0:
        raise OSError("bad publish")
    buf = link._buf
    with open(link.spool, "ab" if link._sp else "wb") as f:
        buf[0] = size & 0xFF
        buf[1] = (size >> 8) & 0xFF
        buf[2] = (size >> 16) & 0xFF
        buf[3] = size >> 24
        buf[4] = tl & 0xFF
        buf[5] = tl >> 8
        f.write(memoryview(buf)[:6])
        _copy(link, f, tl)
        pid = link._exact(2) if qos else None
        _copy(link, f, size)
        f.flush()
    if not link._sp:
        link._sp_at = 0
        link._sp_end = 0
    link._sp += 1
    link._sp_end += 6 + tl + size
    if pid is not None:
        ack = link._puback
        ack[2] = pid[0]
        ack[3] = pid[1]
        link._write(ack, 4)


def _copy(link, f, n):
    # n bytes from the socket to the file, a piece at a time
    sock = link._sock
    while n > 0:
        chunk = sock.read(n if n < 512 else 512)
        if not chunk:
            raise OSError("closed")
        f.write(chunk)
        n -= len(chunk)


def take(link):
    """Move the oldest spooled message into the link's inbox if it fits (``link._room``);
    True if it did. The file is removed once the last one is out."""
    with open(link.spool, "rb") as f:
        f.seek(link._sp_at)
        h = f.read(6)
        size = h[0] | h[1] << 8 | h[2] << 16 | h[3] << 24
        tl = h[4] | h[5] << 8
        if not link._room(size):
            return False
        topic = f.read(tl).decode() if tl else ""
        payload = f.read(size) if size else b""
    link._sp_at += 6 + tl + size
    link._sp -= 1
    link._inbox.append((topic, payload))
    link._in_bytes += size
    if not link._sp:
        link._sp_at = link._sp_end = 0
        try:
            os.remove(link.spool)
        except OSError:
            pass
    return True
