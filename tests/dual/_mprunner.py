# Runs inside MicroPython: imports one dual test module, runs each test, prints one JSON line.
import io
import json
import sys

sys.path.insert(0, "/repo/tests/dual")


def _run(modname):
    mod = __import__(modname)
    results = []
    for name in sorted(dir(mod)):
        if not (name.startswith("test_") or name.startswith("mp_test_")):
            continue
        fn = getattr(mod, name)
        if not callable(fn):
            continue
        try:
            fn()
            results.append({"name": name, "ok": True})
        except BaseException as e:  # noqa: B036 - report everything, keep running
            buf = io.StringIO()
            sys.print_exception(e, buf)
            results.append({"name": name, "ok": False, "error": buf.getvalue()})
    print(json.dumps(results))
