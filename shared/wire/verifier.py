"""The board's gate for signed command envelopes (the format is documented in
``shared/wire/__init__.py``, "Command envelope").

Command handling is rare, so a board imports this module (and ``shared.wire.hmac256``) only
while it handles commands and drops it afterwards (``firmware.commands``); the replay table
lives on flash between commands. The companion reaches the same code through
``shared.wire.codec`` (``verify_envelope``, ``sign_command``).
"""

import binascii
import json

from shared import const
from shared.wire.hmac256 import compare_digest, hmac_sha256
from shared.wire.message import _id, _rng

# Copied from shared/wire/constants.py by python -m tools.dev.consts: edit them there.
_BAD_SIGNATURE = const(3)
_BUSY = const(10)  # busy with another change (e.g. an install in its health window)
_CLOCK_SKEW = const(300)  # s a command's iat may lie ahead of the board's clock
_DUPLICATE = const(1)  # already done: the stored ack is sent again
_EXPIRED = const(4)
_MALFORMED = const(6)
_MAX_LIFETIME = const(604800)  # 7 days
_OK = const(0)
_REPLAYED = const(5)
_UNKNOWN_KIND = const(7)

KINDS = (
    "install_workflow",
    "set_config",
    "resend",
    "reboot",
    "install_bundle",
    "bundle_chunk",
    "cancel",
    "run_command",
)


def _key(key):
    if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
        raise ValueError("key must be at least 16 bytes")
    return bytes(key)


def _load(data):
    # a JSON message's dict, checked for "v": (dict, None) or (None, reason); never raises
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data = str(bytes(data), "utf-8")
        except Exception:
            return None, "payload is not UTF-8"
    if not isinstance(data, str):
        return None, "payload must be bytes or str"
    try:
        d = json.loads(data)
    except Exception:
        return None, "payload is not JSON"
    if not isinstance(d, dict):
        return None, "payload is not a JSON object"
    if d.get("v") != 1 or type(d["v"]) is not int:
        return None, "unsupported version {!r}".format(d.get("v"))
    return d, None


def _check_body(c):
    _id("id", c["id"], True)
    _id("dev", c["dev"])
    _id("kind", c["kind"])
    if not isinstance(c["args"], dict):
        raise ValueError("args must be a dict")
    _rng("exp", c["exp"], _rng("iat", c["iat"], 0, 0xFFFFFFFF) + 1, 0xFFFFFFFF)
    if "skew" in c:
        _rng("skew", c["skew"], -0xFFFFFFFF, 0xFFFFFFFF)


def _open(key, envelope):
    # -> (code, cmd, detail, mac); code is OK, MALFORMED or BAD_SIGNATURE
    d, err = _load(envelope)
    if err:
        return _MALFORMED, None, err, None
    body = d.get("b")
    if not isinstance(body, str):
        return _MALFORMED, None, "b must be a string", None
    if "s" not in d:
        return _BAD_SIGNATURE, None, "unsigned", None
    try:
        sig = binascii.unhexlify(d["s"])
    except Exception:
        return _BAD_SIGNATURE, None, "signature is not hex", None
    try:
        mac = hmac_sha256(key, body.encode())
    except Exception:
        return _MALFORMED, None, "b is not valid text", None
    if not compare_digest(mac, sig):
        return _BAD_SIGNATURE, None, "signature mismatch", None
    try:
        b = json.loads(body)
        if not isinstance(b, dict):
            raise ValueError("not a JSON object")
        c = {}
        for k in ("id", "dev", "kind", "args", "iat", "exp"):
            c[k] = b.get(k)
        if "skew" in b:
            c["skew"] = b["skew"]
        _check_body(c)
    except Exception as e:
        return _MALFORMED, None, "body: {}".format(e), None
    return _OK, c, "", mac


class Verifier:
    """A board's gate for command envelopes: signature, device, time window and replays.

    Times are the companion's: ``iat``/``exp`` are unix seconds on its clock, and ``skew`` (0
    when absent) is its estimate of this boot's clock minus its own, so the board checks the
    window against ``now - skew``: a board whose clock is off still accepts what the companion
    signed for it, and refuses what was signed for a boot whose clock was off another way.

    Replays: an accepted id is remembered with a digest of its body and its exp until the
    newest issue time seen (``hi``: the highest iat of an authentic command for this device
    that was in its window, accepted or refused for its kind or a full table) has passed that
    exp; a command whose exp is below ``hi`` is refused, since it may have been forgotten. Only
    issue times decide what is forgotten, never the board's wall clock, so a clock that was fast
    and is corrected later cannot bring back a command that already ran. A command whose id is
    remembered is a DUPLICATE (same body) or REPLAYED (another body) whatever its time. When
    the table is full of remembered ids a new command gets BUSY (``hi`` still moves, so the
    table empties as newer commands arrive). Without wall time (``now`` None) only ``hi``
    bounds the time. Persist ``table()`` whenever ``dirty`` is set (after an OK, before running
    the command) and ``load_text()`` it at boot (``codec.Verifier`` adds ``state()``, the
    table as JSON, which ``load()`` reads).
    """

    def __init__(self, key, device, capacity=64):
        self._key = _key(key)
        self.device = _id("device", device)
        self.capacity = _rng("capacity", capacity, 1, 4096)
        # The replay table as one str, "\n" then a line per id: "<id> <hex of the first 16
        # bytes of the body HMAC> <exp>\n" (ids have no spaces). A board reads it from flash and
        # writes it back as it is (``table``, ``load_text``): no object per id, ever.
        self._t = "\n"
        # the line of the id recorded last, kept apart: a board records one id per table it
        # loads, and saves the two as they are (no copy of the table to add a line)
        self._add = ""
        self._n = 0  # ids in both
        self._hi = 0
        self.dirty = False  # changed since the last state()

    def check(self, envelope, now):
        """Return ``(code, cmd, detail)``; ``now`` is unix seconds, or None without wall time.

        ``cmd`` is the body dict (with ``skew`` only if it was signed), or None for MALFORMED
        and BAD_SIGNATURE. On OK the id is recorded; on DUPLICATE the caller re-sends the ack
        it stored. EXPIRED details:
        "lifetime over 7 days", "older than the newest command seen" (it may have run and been
        forgotten: never sign it again under this id), "issued in the future" and "expired"
        (the board's clock, corrected by ``skew``, is outside the window: the command was not
        recorded, so a copy signed with a better skew may run).
        """
        if now is not None:
            _rng("now", now, 0, 0xFFFFFFFF)
        code, c, detail, mac = _open(self._key, envelope)
        if code != _OK:
            return code, None, detail
        if c["dev"] != self.device:
            return _MALFORMED, None, "wrong device"
        iat = c["iat"]
        exp = c["exp"]
        if exp - iat > _MAX_LIFETIME:
            return _EXPIRED, c, "lifetime over 7 days"
        digest = binascii.hexlify(mac[:16]).decode()
        cid = c["id"]
        t = self._t
        i = t.find("\n" + cid + " ") + 1
        if not i and self._add.startswith(cid) and self._add.startswith(" ", len(cid)):
            t = self._add
        if i or t is self._add:
            if t.startswith(digest, i + len(cid) + 1):
                return _DUPLICATE, c, "already accepted"
            return _REPLAYED, c, "id reused with another body"
        if exp < self._hi:
            return _EXPIRED, c, "older than the newest command seen"
        if now is not None:
            t = now - c.get("skew", 0)
            if iat > t + _CLOCK_SKEW:
                return _EXPIRED, c, "issued in the future"
            if t > exp:
                return _EXPIRED, c, "expired"
        if iat > self._hi:  # the newest issue time seen in time: forget what expired before it
            self._hi = iat
            self._forget(iat)
            self.dirty = True
        if c["kind"] not in KINDS:
            return _UNKNOWN_KIND, c, "unknown kind"
        if self._n >= self.capacity:
            return _BUSY, c, "replay table full"
        if self._add:
            self._t += self._add
        self._add = "{} {} {}\n".format(cid, digest, exp)
        self._n += 1
        self.dirty = True
        return _OK, c, ""

    def _forget(self, iat):
        # drop the ids whose exp is below iat: the lines kept are copied once, the rest skipped
        s = str(iat)
        a = self._add
        if a and _less(a, a.rfind(" ") + 1, len(a) - 1, s):
            self._add = ""
            self._n -= 1
        t = self._t
        out = None  # the lines kept so far, once one is dropped
        i = 1
        keep = 1  # where the run of kept lines started
        while i < len(t):
            e = t.find("\n", i)
            if _less(t, t.rfind(" ", i, e) + 1, e, s):
                out = (out or "\n") + t[keep:i]
                self._n -= 1
                keep = e + 1
            i = e + 1
        if out is not None:
            self._t = out + t[keep:]

    def table(self):
        """``(hi, text, line)``: the table as a board keeps it on flash, ``text + line``
        (``load_text`` restores it); the strs the verifier holds, no copy."""
        self.dirty = False
        return self._hi, self._t, self._add

    def load_text(self, hi, text):
        """Restore a table saved from ``table()``; ValueError when it is malformed (each
        line's fields are checked in place: nothing is allocated per id)."""
        _rng("hi", hi, 0, 0xFFFFFFFF)
        if not isinstance(text, str) or not text.startswith("\n") or not text.endswith("\n"):
            raise ValueError("bad verifier state: not a table")
        n = 0
        i = 1
        while i < len(text):
            e = text.find("\n", i)
            a = text.find(" ", i, e)
            b = text.find(" ", a + 1, e)
            if (
                a <= i
                or a - i > 64
                or b != a + 33
                or text.find(" ", b + 1, e) >= 0
                or not 0 < e - b - 1 <= 10
                or (e - b > 2 and text.startswith("0", b + 1))
                or not _less(text, b + 1, e, "4294967296")
            ):
                raise ValueError("bad verifier state: line {}".format(n + 1))
            for k in range(b + 1, e):
                if not 48 <= ord(text[k]) <= 57:
                    raise ValueError("bad verifier state: line {}".format(n + 1))
            n += 1
            i = e + 1
        if n > self.capacity:
            raise ValueError("bad verifier state: more ids than capacity")
        self._t = text
        self._add = ""
        self._n = n
        self._hi = hi

    def load(self, state):
        """Restore a table saved by ``state()``; raises ValueError naming what is wrong."""
        if (
            not isinstance(state, dict)
            or state.get("v") != 1
            or "hi" not in state
            or "ids" not in state
        ):
            raise ValueError("verifier state must be a dict with v=1, hi and ids")
        try:
            if len(state["ids"]) > self.capacity:
                raise ValueError("more ids than capacity")
            lines = ["\n"]
            for k, digest, exp in state["ids"]:
                _id("id", k, True)
                if len(binascii.unhexlify(digest)) != 16:
                    raise ValueError("digest must be 32 hex chars")
                _rng("exp", exp, 0, 0xFFFFFFFF)
                lines.append("{} {} {}\n".format(k, digest.lower(), exp))
            hi = _rng("hi", state["hi"], 0, 0xFFFFFFFF)
        except (TypeError, ValueError) as e:
            raise ValueError("bad verifier state: {}".format(e)) from None
        self._t = "".join(lines)
        self._add = ""
        self._n = len(lines) - 1
        self._hi = hi


def _less(t, b, e, s):
    # whether the decimal number t[b:e] is below the decimal number s (no leading zeros):
    # compared digit by digit in place, so nothing is allocated (an exp is past 2**30: an int
    # of it would be a long int on a board); few locals, so its frame fits on the C stack
    if e - b != len(s):
        return e - b < len(s)
    e = 0
    while e < len(s):
        if t[b] != s[e]:
            return t[b] < s[e]
        b += 1
        e += 1
    return False
