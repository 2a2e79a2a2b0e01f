"""App bundle archive: pack on the companion, stream-unpack on the board."""

import io

from _util import raises

from shared import bundle


def _unpack(blob):
    files = {}

    def write(path, piece, first):
        if first:
            files[path] = b""
        files[path] += piece

    paths = bundle.unpack(io.BytesIO(blob), write, chunk=7)
    return paths, files


def test_round_trip_streams_in_pieces():
    src = [("firmware/node.mpy", b"x" * 100), ("shared/a.mpy", b""), ("main.py", b"print(1)\n")]
    paths, files = _unpack(bundle.pack(src))
    assert paths == ["firmware/node.mpy", "shared/a.mpy", "main.py"]
    for path, data in src:
        assert files[path] == data


def test_round_trip_into_one_buffer_is_the_same():
    src = [("firmware/node.mpy", bytes(range(100))), ("shared/a.mpy", b""), ("m.py", b"x" * 14)]
    blob = bundle.pack(src)
    files = {}

    def write(path, piece, first):
        if first:
            files[path] = b""
        files[path] += bytes(piece)

    buf = bytearray(7)
    assert bundle.unpack(io.BytesIO(blob), write, 7, buf) == _unpack(blob)[0]
    assert files == _unpack(blob)[1]
    for n in range(len(blob)):
        e = raises(ValueError, bundle.unpack, io.BytesIO(blob[:n]), write, 7, buf)
        assert "truncated" in str(e) or "magic" in str(e)


def test_bad_paths_are_refused_on_pack():
    for p in ("/abs.py", "../up.py", "a/../b.py", "a//b.py", "", "a\\b.py", "x" * 129):
        e = raises(ValueError, bundle.pack, [(p, b"1")])
        assert "path" in str(e)


def test_malformed_bundles_are_refused():
    good = bundle.pack([("a.py", b"12345")])
    assert "magic" in str(raises(ValueError, _unpack, b"XXXX" + good[4:]))
    for n in range(len(good)):
        e = raises(ValueError, _unpack, good[:n])
        assert "truncated" in str(e) or "magic" in str(e)
    assert "trailing" in str(raises(ValueError, _unpack, good + b"!"))
    evil2 = b"ORB1" + bytes([1, 0, 5, 0]) + b"../ab" + bytes([1, 0, 0, 0]) + b"1"
    assert "bad path" in str(raises(ValueError, _unpack, evil2))


def test_path_check_in_place_matches_the_rule_by_parts():
    # the board's check walks the parts in place; the rule is the split's
    def by_parts(p):
        if not p or len(p) > bundle.MAX_PATH or p[0] == "/" or "\\" in p:
            return False
        return all(part not in ("", ".", "..") for part in p.split("/"))

    cases = ["a", "a/b.mpy", ".", "..", "...", "a/./b", "a/../b", "a/.../b", ".a/b.", "a/..b",
             "a//b", "a/", "/a", "a\\b", "..a", "a/.", "a/..", "x" * 128, "x" * 129, "", "é/ü"]
    for p in cases:
        assert bundle._check_path(p) == by_parts(p), p
