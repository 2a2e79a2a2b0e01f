"""Test-suite plumbing: every module in tests/dual runs on CPython and on real MicroPython.

On MicroPython each dual module runs once, in its own interpreter, with the repository
mounted read-only at /repo and a fresh empty writable directory at /flash.
"""

from __future__ import annotations

import ast
import json
import tempfile
from pathlib import Path

import pytest

DUAL = Path(__file__).parent / "dual"
_counts: dict[str, dict[str, int]] = {}


def _mp_test_names(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [
        n.name
        for n in tree.body
        if isinstance(n, ast.FunctionDef)
        and (n.name.startswith("test_") or n.name.startswith("mp_test_"))
    ]


class MicroPythonModule(pytest.File):
    """Collects a dual test module a second time, to run on the MicroPython runtime."""

    def collect(self):
        for name in _mp_test_names(self.path):
            yield MicroPythonItem.from_parent(self, name=f"{name}[micropython]", func=name)


_results_cache: dict[str, dict[str, dict]] = {}


def _module_results(path: Path) -> dict[str, dict]:
    key = str(path)
    if key not in _results_cache:
        from tools.dev import mpwasm

        code = (
            "import sys\nsys.path.insert(0, '/repo/tests/dual')\n"
            "import _mprunner\n"
            f"_mprunner._run({path.stem!r})\n"
        )
        with tempfile.TemporaryDirectory(prefix="orrery-flash-") as flash:
            res = mpwasm.run(code, rw_dir=flash)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("[")]
        if res.exit_code != 0 or not lines:
            err = f"MicroPython run of {path.name} failed (exit {res.exit_code}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
            _results_cache[key] = {"__error__": {"ok": False, "error": err}}
        else:
            _results_cache[key] = {r["name"]: r for r in json.loads(lines[-1])}
    return _results_cache[key]


class MicroPythonItem(pytest.Item):
    def __init__(self, *, func: str, **kw):
        super().__init__(**kw)
        self.func = func
        self.add_marker(pytest.mark.micropython)

    def runtest(self):
        results = _module_results(self.path)
        if "__error__" in results:
            raise AssertionError(results["__error__"]["error"])
        r = results.get(self.func)
        if r is None:
            raise AssertionError(f"{self.func} did not run on MicroPython")
        if not r["ok"]:
            raise AssertionError(r["error"])

    def repr_failure(self, excinfo):
        return str(excinfo.value)

    def reportinfo(self):
        return self.path, None, f"{self.path.name}::{self.name}"


def pytest_collect_file(parent, file_path: Path):
    if (
        file_path.parent == DUAL
        and file_path.name.startswith("test_")
        and file_path.suffix == ".py"
    ):
        return MicroPythonModule.from_parent(
            parent, path=file_path, name=f"{file_path.name}[micropython]"
        )
    return None


def pytest_runtest_logreport(report):
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    runtime = "micropython" if "[micropython]" in report.nodeid else "cpython"
    c = _counts.setdefault(runtime, {"passed": 0, "failed": 0, "skipped": 0})
    c[report.outcome] = c.get(report.outcome, 0) + 1


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    tr.section("tests per runtime")
    for runtime in ("cpython", "micropython"):
        c = _counts.get(runtime, {"passed": 0, "failed": 0, "skipped": 0})
        tr.write_line(
            f"{runtime}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped"
        )


@pytest.fixture(scope="session")
def broker():
    """A Mosquitto started for this test session (per xdist worker) on a free port."""
    from tests.support.broker import Broker

    b = Broker().start()
    yield b
    b.close()


@pytest.fixture
def own_broker():
    """A Mosquitto of this test's own, for tests that stop, kill or restart it."""
    from tests.support.broker import Broker

    b = Broker().start()
    yield b
    b.close()


def _pg_or_skip() -> None:
    from tests.support import pg

    why = pg.unreachable()
    if why:
        if __import__("os").environ.get("CI"):
            pytest.fail(f"{why}; CI here must run the PostgreSQL tests")
        pytest.skip(why)


@pytest.fixture
def pg_url():
    """A fresh, empty PostgreSQL database for this test (skipped, visibly, where none runs)."""
    from tests.support import pg

    _pg_or_skip()
    with pg.fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh database URL: each test using it runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'orrery.db'}"
        return
    from tests.support import pg

    _pg_or_skip()
    with pg.fresh_database() as url:
        yield url
