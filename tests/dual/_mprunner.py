# Runs inside MicroPython: imports one dual test module, runs each test, prints one JSON line.
#
# Automatic garbage collection is off: on the WASI build the collector cannot see call frames
# that live on the heap (functions with more than ~11 words of locals and stack), so a
# collection in the middle of a test could free live objects. With it off, a test that needs
# more than the heap fails loudly with MemoryError instead. Functions here stay small for the
# same reason.
import gc
import io
import json
import sys

sys.path.insert(0, "/repo/tests/dual")
gc.disable()
RESULTS = []
MOD = [None]


def _fail(name, e):
    buf = io.StringIO()
    sys.print_exception(e, buf)
    RESULTS.append({"name": name, "ok": False, "error": buf.getvalue()})


def _one(name):
    try:
        getattr(MOD[0], name)()
        RESULTS.append({"name": name, "ok": True})
    except BaseException as e:  # noqa: B036 - report everything, keep running
        _fail(name, e)


def _run(modname):
    MOD[0] = __import__(modname)
    for name in sorted(dir(MOD[0])):
        if name.startswith("test_") or name.startswith("mp_test_"):
            _one(name)
    print(json.dumps(RESULTS))
