"""shared/wire/verifier.py on both runtimes: a board whose clock is off, the skew a command is
signed with, and a replay table that forgets by issue time, never by the board's clock.

(A module of its own: each dual module runs in one MicroPython heap, collection off.)"""

import json

from _util import raises
from test_protocol import DEV, KEY, OTHER_KEY, T0, _cd, _envelope, _hex, _sign

from shared.wire import codec
from shared.wire.hmac256 import hmac_sha256


def test_verifier_checks_the_window_on_the_boards_clock_corrected_by_skew():
    # boards whose clock is off: 400 s slow, 1 h slow, 1 h fast, 1 year fast and slow
    year = 365 * 86400
    for off in (-400, -3600, 3600, year, -year):
        v = codec.Verifier(KEY, DEV)
        now = T0 + off  # the board's clock when the companion's reads T0
        # signed in the companion's time only, the command falls outside the board's window
        code, cmd, detail = v.check(_sign("x", exp=T0 + 600), now)
        assert code == codec.EXPIRED and detail in ("issued in the future", "expired"), off
        assert v.state()["ids"] == [], "a refused command is not recorded"
        # the same id signed with the board's skew runs (it was never recorded)
        code, cmd, detail = v.check(_sign("x", exp=T0 + 600, skew=off), now)
        assert (code, detail) == (codec.OK, ""), off
        assert cmd["skew"] == off and cmd["iat"] == T0
        # a command signed with another boot's skew is refused the same way
        assert v.check(_sign("y", exp=T0 + 600, skew=-off), now)[0] == codec.EXPIRED
    # the skew is part of the signed body, range-checked like iat and exp
    env = json.loads(_sign(skew=-5))
    assert json.loads(env["b"])["skew"] == -5
    assert "skew" not in json.loads(json.loads(_sign())["b"])
    assert "skew must be" in str(
        raises(ValueError, _sign, "c", "reboot", None, T0, T0 + 9, DEV, KEY, 2**32)
    )
    assert "skew must be" in str(
        raises(ValueError, _sign, "c", "reboot", None, T0, T0 + 9, DEV, KEY, True)
    )
    body = json.dumps(
        {"id": "s", "dev": DEV, "kind": "reboot", "args": {}, "iat": T0, "exp": T0 + 9, "skew": "1"}
    )
    env = _envelope(body, _hex(hmac_sha256(KEY, body.encode())))
    code, cmd, detail = codec.Verifier(KEY, DEV).check(env, T0)
    assert (code, cmd) == (codec.MALFORMED, None) and "skew must be" in detail


def test_verifier_forgets_by_issue_time_so_a_clock_correction_brings_nothing_back():
    # a clock 2 h fast for one boot; the companion signs in its own time (skew not known yet)
    fast = 7200
    v = codec.Verifier(KEY, DEV)
    x = _sign("X", iat=T0, exp=T0 + 86400)
    assert v.check(x, T0 + fast)[0] == codec.OK
    # 22 h later (the fast clock is past X's exp) another command arrives: X is still remembered
    assert v.check(_sign("Y", iat=T0 + 79300, exp=T0 + 79300 + 86400), T0 + 79300 + fast)[0] == (
        codec.OK
    )
    assert [e[0] for e in v.state()["ids"]] == ["X", "Y"]
    # the clock is corrected (a new boot, the table from flash): X delivered again does not run
    w = codec.Verifier(KEY, DEV)
    w.load(json.loads(json.dumps(v.state())))
    assert _cd(w.check(x, T0 + 79400)) == (codec.DUPLICATE, "already accepted")
    # only a newer issue time forgets X, and from then on X is refused by that, whatever the clock
    assert w.check(_sign("Z", iat=T0 + 86401, exp=T0 + 87000), T0 + 86401)[0] == codec.OK
    assert [e[0] for e in w.state()["ids"]] == ["Y", "Z"]
    for now in (T0, T0 + 79400, None):
        assert _cd(w.check(x, now)) == (codec.EXPIRED, "older than the newest command seen")


def test_verifier_newest_issue_time_moves_with_every_authentic_command_in_its_window():
    v = codec.Verifier(KEY, DEV, capacity=1)
    assert v.check(_sign("a", iat=T0, exp=T0 + 600), None)[0] == codec.OK
    v.state()
    assert not v.dirty
    # a newer issue time frees the table, even without wall time
    assert v.check(_sign("b", iat=T0 + 700, exp=T0 + 1300), None)[0] == codec.OK
    assert [e[0] for e in v.state()["ids"]] == ["b"] and v.state()["hi"] == T0 + 700
    # refused commands in their window move it too: an unknown kind, or a full table
    assert v.check(_sign("k", kind="launch", iat=T0 + 800, exp=T0 + 2000), T0 + 800)[0] == (
        codec.UNKNOWN_KIND
    )
    assert v.dirty and v.state() == {
        "v": 1,
        "hi": T0 + 800,
        "ids": [["b", v.state()["ids"][0][1], T0 + 1300]],
    }
    assert v.check(_sign("c", iat=T0 + 900, exp=T0 + 1500), T0 + 900)[0] == codec.BUSY
    assert v.dirty and v.state()["hi"] == T0 + 900
    assert v.check(_sign("c", iat=T0 + 1301, exp=T0 + 1900), T0 + 1301)[0] == codec.OK  # b gone
    v.state()
    # but not one outside the board's window: a companion clock gone wrong (a year ahead) must
    # not make the board refuse every right command for a year; nor an unauthentic one, one for
    # another device, or one with too long a life
    year = 365 * 86400
    for env in (_sign("f", iat=T0 + year, exp=T0 + year + 600),
                _sign("g", iat=T0 + 9000, exp=T0 + 9600, key=OTHER_KEY),
                _sign("h", iat=T0 + 9000, exp=T0 + 9600, dev="dev-02"),
                _sign("i", iat=T0 + 9000, exp=T0 + 9000 + 7 * 86400 + 1)):  # fmt: skip
        assert v.check(env, T0 + 1400)[0] != codec.OK
        assert not v.dirty and v.state()["hi"] == T0 + 1301
    assert v.check(_sign("d", iat=T0 + 1400, exp=T0 + 2000), T0 + 1400)[0] == codec.BUSY


def test_state_is_json_that_load_restores():
    v = codec.Verifier(KEY, DEV)
    assert json.loads(json.dumps(v.state())) == v.state() == {"v": 1, "hi": 0, "ids": []}
    for i in range(3):
        assert v.check(_sign("c:" + str(i), exp=T0 + 600 + i), T0)[0] == codec.OK
    assert v.dirty
    got = json.loads(json.dumps(v.state()))
    assert not v.dirty and len(got["ids"]) == 3
    w = codec.Verifier(KEY, DEV)
    w.load(got)
    assert w.state() == v.state()


def test_the_table_a_board_saves_restores_the_same_verifier_without_an_object_per_id():
    from _util import MICROPYTHON

    v = codec.Verifier(KEY, DEV)
    for i in range(40):
        assert v.check(_sign("b" + str(i), exp=T0 + 3600 + i), T0)[0] == codec.OK
    hi, text, line = v.table()
    text += line
    assert not v.dirty and hi == T0 and text.count("\n") == 41
    w = codec.Verifier(KEY, DEV)
    w.load_text(hi, text)
    assert w.state() == v.state()
    if MICROPYTHON:  # checked in place: nothing is allocated per id
        import micropython

        used = []
        for t in (text[: text.find("\n", 1) + 1], text):
            before = micropython.mem_total()
            w.load_text(hi, t)
            used.append(micropython.mem_total() - before)
        assert used[0] == used[1], used
    # what it remembers works as before: a duplicate, a replay, forgetting by issue time
    assert w.check(_sign("b7", exp=T0 + 3607), T0)[0] == codec.DUPLICATE
    assert w.check(_sign("b7", kind="cancel", exp=T0 + 3607), T0)[0] == codec.REPLAYED
    assert w.check(_sign("n", iat=T0 + 3620, exp=T0 + 7200), T0 + 3620)[0] == codec.OK
    assert [e[0] for e in w.state()["ids"]] == sorted(["b" + str(i) for i in range(20, 40)] + ["n"])
    assert w.state()["hi"] == T0 + 3620


def test_a_malformed_table_is_refused_and_changes_nothing():
    v = codec.Verifier(KEY, DEV)
    assert v.check(_sign("a", exp=T0 + 600), T0)[0] == codec.OK
    hi, good, line = v.table()
    good += line
    digest = "0" * 32
    for bad in (
        "",
        "x 1",
        "\nid " + digest + "\n",  # no exp
        "\nid " + digest + " 12a\n",
        "\nid " + digest + " 4294967296\n",  # past u32
        "\nid " + digest + " 0123\n",
        "\nid " + digest[:31] + " 5\n",
        "\nid " + digest + " 5 x\n",
        "\n" + "i" * 65 + " " + digest + " 5\n",
        "\nid " + digest + " 5",  # no newline at the end
    ):
        raises(ValueError, v.load_text, hi, bad)
        assert v.table()[0] == hi and "".join(v.table()[1:]) == good
    raises(ValueError, codec.Verifier(KEY, DEV, capacity=1).load_text, hi, good + good[1:])
