"""A locked-down Mosquitto configuration for one fleet, and the fleet secret it derives from.

``write_config`` (``orrery broker config``) writes into a directory:

- ``mosquitto.conf``: no anonymous access, one listener (plain, or TLS with the given CA, cert
  and key; optionally a second, plain one of the companion's own), persistence on and no limit
  on queued messages, so an offline board or a stopped companion loses nothing queued for it;
- ``passwd``: one line per board and one for the companion, in Mosquitto's own ``$7$`` format
  (PBKDF2-SHA512, what ``mosquitto_passwd`` writes), computed here; a board's user name is its
  device id and its password ``keys.mqtt_password(secret, device_id)``;
- ``acl``: a board may publish only under ``orrery/<fleet>/<itself>/up/`` and read only
  ``orrery/<fleet>/<itself>/down/``; the companion user reads and writes all of
  ``orrery/<fleet>/``;
- ``companion.password``: the companion's password, for ``orrery serve --password-file``;
- with a companion listener, ``passwd.companion``: the only account that listener accepts;
- ``data/``: Mosquitto's persistence directory; ``tls/``: copies of the TLS files.

What Mosquitto 2.0 (checked on 2.0.11) does with this, which the tests pin down:

- A denied publish gets PUBACK 135 (MQTT 5) and then Mosquitto closes the connection.
- The ACL file does not check subscriptions (SUBACK grants anything); read access is checked
  per message on its real topic, so ``$share/<group>/…`` needs no ACL of its own. It also means
  a board that joins the companion's shared group makes the broker drop the messages that fall
  to it: the group name must not be guessable by boards.
- A will is accepted at CONNECT and checked when it is published: a board's will on another
  board's topic is silently dropped.
- Client ids are free unless ``use_username_as_clientid`` is on: a board can take over another
  client's session and the messages queued there are dropped. ``--companion-port`` turns it on
  for the boards' listener and gives the companion (several workers, own client ids) its own.
- Started as root, Mosquitto drops to ``mosquitto`` right after reading its config, before it
  loads the password file, the ACL and the TLS files.

Nothing here needs a per-device secret on disk: passwords are derived from the fleet secret.
Device ids are given as a list; :func:`write_config` does not care where they came from (the
command line today, the devices registry later).
"""

from __future__ import annotations

import grp
import hashlib
import hmac
import os
import pwd
import re
import ssl
import tempfile
from base64 import b64encode
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from cloud.orrery.fleet import keys

COMPANION_USER = "orrery-companion"
"""Default MQTT user name of the companion (ingest, orchestrator)."""

MOSQUITTO_USER = "mosquitto"
"""The account Mosquitto drops to when started as root (Debian, Alpine, the official image)."""

HASH_ITERATIONS = 1000
"""PBKDF2 rounds in the password file. The passwords are 192 random bits, so the rounds add no
real strength; they only cost the broker CPU on every connect. (mosquitto_passwd 2.0 uses 101.)"""

_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
_HOST = re.compile(r"[A-Za-z0-9_.:%-]{1,253}\Z")

CONF = "mosquitto.conf"
PASSWD = "passwd"
ACL = "acl"
COMPANION_PASSWORD = "companion.password"
COMPANION_PASSWD = "passwd.companion"
DATA = "data"
TLS_DIR = "tls"


class BrokerConfigError(ValueError):
    """An input to the broker configuration is unusable; the message says which and why."""


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a TLS listener: the CA the boards trust, the broker's cert and its key."""

    cafile: Path
    certfile: Path
    keyfile: Path


# --- validation ------------------------------------------------------------------------------


def check_id(value: str, what: str) -> str:
    """``value`` if it is an id (1..64 chars of ``[A-Za-z0-9_.-]``), else BrokerConfigError."""
    if not isinstance(value, str) or not _ID.match(value):
        raise BrokerConfigError(
            f"{what} {value!r} is not a valid id: 1..64 characters of A-Z a-z 0-9 _ . -"
        )
    return value


def check_devices(devices: list[str], companion_user: str = COMPANION_USER) -> list[str]:
    """The device ids, validated: not empty, each an id, no duplicates, none the companion."""
    if not devices:
        raise BrokerConfigError("no devices: give --device ID (repeatable) or --devices-file FILE")
    for device in devices:
        check_id(device, "device id")
    dupes = sorted(d for d, n in Counter(devices).items() if n > 1)
    if dupes:
        raise BrokerConfigError(f"duplicate device ids: {', '.join(dupes)}")
    if companion_user in devices:
        raise BrokerConfigError(
            f"device id {companion_user!r} is the companion's user name; "
            "rename the device or pick another --companion-user"
        )
    return list(devices)


def read_devices_file(path: Path) -> list[str]:
    """Device ids from a text file: one per line; blank lines and ``#`` comments are skipped."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise BrokerConfigError(f"devices file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise BrokerConfigError(f"devices file {path}: not UTF-8 text") from None
    devices = []
    for number, line in enumerate(text.splitlines(), 1):
        device = line.split("#", 1)[0].strip()
        if not device:
            continue
        try:
            devices.append(check_id(device, "device id"))
        except BrokerConfigError as exc:
            raise BrokerConfigError(f"{path}:{number}: {exc}") from None
    return devices


def check_tls(tls: TLSFiles) -> None:
    """Raise BrokerConfigError unless the key matches the cert and the CA verifies the cert.

    Both are checked with a TLS handshake in memory, so a broker that would fail every board's
    handshake is caught here rather than on the boards. The host name is not checked: the
    boards' ``broker.host`` must be a name (or address) in the certificate.
    """
    for label, path in (("--cafile", tls.cafile), ("--certfile", tls.certfile)):
        if not path.is_file():
            raise BrokerConfigError(f"{label} {path}: no such file")
    if not tls.keyfile.is_file():
        raise BrokerConfigError(f"--keyfile {tls.keyfile}: no such file")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        server.load_cert_chain(tls.certfile, tls.keyfile)
    except ssl.SSLError as exc:
        raise BrokerConfigError(
            f"--certfile {tls.certfile} / --keyfile {tls.keyfile}: not a matching PEM "
            f"certificate and key ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise BrokerConfigError(f"--certfile/--keyfile: {exc.strerror}") from None
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    try:
        client.load_verify_locations(cafile=tls.cafile)
    except (ssl.SSLError, OSError) as exc:
        raise BrokerConfigError(
            f"--cafile {tls.cafile}: not a PEM CA certificate ({exc})"
        ) from None
    if not _handshake(client, server):
        raise BrokerConfigError(
            f"--certfile {tls.certfile} is not signed by --cafile {tls.cafile}: "
            "boards that trust that CA would refuse the broker"
        )


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> bool:
    """True when a client with ``client`` accepts a server with ``server`` (all in memory)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_side=False)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, end in (("c", c), ("s", s)):
            if done[name]:
                continue
            try:
                end.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return False
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if done["c"] and done["s"]:
            return True
    return False


def default_owner() -> str | None:
    """``mosquitto`` when running as root and that account exists, else None (files stay ours)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(MOSQUITTO_USER)
    except KeyError:
        return None
    return MOSQUITTO_USER


# --- file contents ---------------------------------------------------------------------------


def password_hash(password: str, salt: bytes, iterations: int = HASH_ITERATIONS) -> str:
    """``password`` in Mosquitto 2's ``$7$`` form: ``$7$<rounds>$<b64 salt>$<b64 hash>``."""
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${b64encode(salt).decode()}${b64encode(digest).decode()}"


def password_file_text(secret: bytes, users: list[str]) -> str:
    """The password file: ``user:$7$…`` for each user, password ``keys.mqtt_password``.

    Salts are derived from the fleet secret and the user, not random, so writing the config
    again for the same inputs gives the same bytes (no diff, no spurious reload).
    """
    lines = []
    for user in users:
        salt = hmac.new(secret, b"orrery/mqtt-salt/" + user.encode(), hashlib.sha256).digest()
        lines.append(f"{user}:{password_hash(keys.mqtt_password(secret, user), salt[:12])}")
    return "\n".join(lines) + "\n"


def acl_text(fleet: str, companion_user: str = COMPANION_USER) -> str:
    """The ACL: boards own their topics, the companion owns the fleet's."""
    base = f"orrery/{fleet}"
    return f"""\
# Orrery fleet {fleet!r}: topic access, written by `orrery broker config`.
# Anything not granted here is denied. A denied publish is dropped (MQTT 5: PUBACK reason 135,
# "not authorized"; Mosquitto 2.0 then also closes the connection). Subscriptions are not
# checked (SUBACK grants them), but a message is delivered only to clients that may read it.
# So a board can join the companion's shared-subscription group and the messages that fall
# to it are dropped: keep that group's name (orrery serve --group) to the companion.

# Every board, by its user name (= device id): publish its own up/ topics (state, readings,
# events, acks, loss, pull; up/state is also its last will) and read its own commands. Nothing
# else: not another board's data, not another board's commands.
pattern write {base}/%u/up/#
pattern read {base}/%u/down/#

# The companion (ingest, orchestrator): everything in the fleet. It subscribes to
# $share/<group>/{base}/+/up/# (read access is checked on each message's own topic, so a
# shared subscription needs no rule of its own), sends down/cmd to any board, reads retained
# states and clears them.
user {companion_user}
topic readwrite {base}/#
"""


def mosquitto_conf_text(
    *,
    fleet: str,
    port: int,
    bind: str,
    password_file: Path,
    acl_file: Path,
    persistence_dir: Path,
    tls: TLSFiles | None,
    max_queued: int,
    companion_port: int | None = None,
    companion_bind: str = "127.0.0.1",
    companion_password_file: Path | None = None,
) -> str:
    """The broker configuration (absolute paths; one listener, or two with ``companion_port``:
    then each listener checks logins against its own password file, and only the companion's
    account is in the companion listener's)."""
    auth = f"""allow_anonymous false
password_file {password_file}
acl_file {acl_file}"""
    listener = f"listener {port} {bind}".rstrip()
    if tls:
        listener += f"""
# TLS: boards verify the broker against the CA in their config (broker.ca); they log in with
# their password, not with a client certificate.
cafile {tls.cafile}
certfile {tls.certfile}
keyfile {tls.keyfile}
tls_version tlsv1.2
require_certificate false"""
    if companion_port is None:
        listener += """
# Boards and the companion share this listener, so client ids are free: a board that connects
# with another client's id takes over that client's session, and what was queued for it is
# dropped (it may not read it). Give the companion its own listener (--companion-port) to
# tie every board's client id to its user name."""
    else:
        listener += f"""
# The boards' accounts only. A board's client id is its user name, whatever it asks for: no
# board can take over another board's session (and drop the commands queued there) or kick it
# off.
{auth}
use_username_as_clientid true

# The companion's listener: only the companion's account logs in here (its own password file:
# a board's password is refused), and its workers keep their own client ids (each one its
# persistent session). Plain MQTT: keep it on loopback or a private network.
listener {companion_port} {companion_bind}
allow_anonymous false
password_file {companion_password_file}
acl_file {acl_file}""".rstrip()
    queued = "no limit" if max_queued == 0 else f"at most {max_queued}"
    if companion_port is None:
        settings = "per_listener_settings false\n" + auth
    else:  # logins and topic access are set per listener, below
        settings = "per_listener_settings true"
    return f"""\
# Mosquitto for the Orrery fleet {fleet!r}, written by `orrery broker config`.
# Write it again when devices change, then `kill -HUP <mosquitto pid>`: Mosquitto reloads
# the password file and the ACL without dropping anyone. Listener changes need a restart.

{settings}

{listener}

# A fleet must not lose queued QoS 1 messages: readings queued for a stopped companion, and
# commands queued for a board that is offline (boards keep a persistent session).
# - Mosquitto's default max_queued_messages is 1000 per client, and past it it DROPS new
#   messages silently; here: {queued} (0 = no limit; memory is then the bound).
# - persistence keeps the queues, retained states and sessions across a broker restart. The
#   in-memory state is saved every autosave_interval seconds and on a clean shutdown, so a
#   crash loses at most that window: readings lost so come back as gaps the companion asks
#   the board to resend, and a board pulls its pending commands when it connects.
persistence true
persistence_location {persistence_dir}/
autosave_interval 60
max_queued_messages {max_queued}
max_queued_bytes 0
"""


# --- writing ---------------------------------------------------------------------------------


def _write(
    path: Path, content: str | bytes, mode: int, owner: tuple[int, int] | None = None
) -> None:
    """Write ``path`` atomically (a running broker never reads half a file) with ``mode``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
        os.chmod(tmp, mode)
        if owner:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _owner_ids(owner: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        raise BrokerConfigError(f"--owner {owner!r}: no such user") from None
    try:
        gid = grp.getgrnam(owner).gr_gid
    except KeyError:
        gid = entry.pw_gid
    return entry.pw_uid, gid


def write_config(
    out_dir: Path,
    fleet: str,
    devices: list[str],
    secret: bytes,
    *,
    port: int | None = None,
    companion_user: str = COMPANION_USER,
    tls: TLSFiles | None = None,
    bind: str = "",
    persistence_dir: Path | None = None,
    max_queued: int = 0,
    owner: str | None = None,
    companion_port: int | None = None,
    companion_bind: str = "127.0.0.1",
) -> dict[str, Path]:
    """Write the Mosquitto configuration for ``devices`` of ``fleet`` into ``out_dir``.

    ``port`` defaults to 8883 with ``tls``, else 1883; ``bind`` empty means all interfaces.
    With ``companion_port`` the companion gets a listener of its own (plain MQTT on
    ``companion_bind``) where only its account can log in (``passwd.companion``; a board's
    password is refused there), and the boards' listener ties each client id to its user name,
    so no board can take over another client's session. ``persistence_dir`` defaults to
    ``out_dir/data``. ``owner`` (a user name) gets the password file, the ACL and the
    persistence directory: Mosquitto started as root drops to that account before it reads
    them, and Mosquitto 2.0.17+ warns (future versions refuse) when they are not its own or are
    world-readable. Files are written atomically: the password file and the ACL 0640,
    ``companion.password`` 0600 (never chowned). Every input is validated first, so an error
    writes nothing.

    The TLS files are copied to ``out_dir/tls/`` (key 0600) and owned by ``owner`` too:
    Mosquitto drops root before it loads them, so it could not read a root-only key where it
    lies (``/etc/letsencrypt``, say). Write the config again after renewing the certificate.

    Returns the written paths by name: ``config``, ``password_file``, ``acl_file``,
    ``companion_password_file``, ``persistence_dir``, and with TLS ``tls_cafile``,
    ``tls_certfile``, ``tls_keyfile``.
    """
    check_id(fleet, "fleet")
    check_id(companion_user, "companion user")
    devices = check_devices(devices, companion_user)
    if len(secret) < 16:
        raise BrokerConfigError(f"fleet secret is {len(secret)} bytes; it needs at least 16")
    if port is None:
        port = 8883 if tls else 1883
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BrokerConfigError(f"port {port!r} is out of range 1..65535")
    if bind and not _HOST.match(bind):
        raise BrokerConfigError(f"bind address {bind!r} is not an IP address or host name")
    if companion_port is not None:
        if (
            isinstance(companion_port, bool)
            or not isinstance(companion_port, int)
            or not 1 <= companion_port <= 65535
        ):
            raise BrokerConfigError(f"companion port {companion_port!r} is out of range 1..65535")
        if companion_port == port:
            raise BrokerConfigError(f"companion port {companion_port} is also the boards' port")
        if not _HOST.match(companion_bind):
            raise BrokerConfigError(
                f"companion bind address {companion_bind!r} is not an IP address or host name"
            )
    if isinstance(max_queued, bool) or not isinstance(max_queued, int) or max_queued < 0:
        raise BrokerConfigError(
            f"max queued messages {max_queued!r}: expected 0 (no limit) or more"
        )
    if tls:
        tls = TLSFiles(*(p.expanduser().resolve() for p in (tls.cafile, tls.certfile, tls.keyfile)))
        check_tls(tls)
    ids = _owner_ids(owner) if owner else None
    if out_dir.exists() and not out_dir.is_dir():
        raise BrokerConfigError(f"output directory {out_dir}: exists and is not a directory")

    out_dir = out_dir.expanduser().resolve()
    data = (persistence_dir or out_dir / DATA).expanduser().resolve()
    paths = {
        "config": out_dir / CONF,
        "password_file": out_dir / PASSWD,
        "acl_file": out_dir / ACL,
        "companion_password_file": out_dir / COMPANION_PASSWORD,
        "persistence_dir": data,
    }
    if companion_port is not None:
        paths["companion_passwd_file"] = out_dir / COMPANION_PASSWD
    copies = None
    if tls:
        copies = TLSFiles(
            out_dir / TLS_DIR / "ca.crt",
            out_dir / TLS_DIR / "server.crt",
            out_dir / TLS_DIR / "server.key",
        )
        paths |= {
            "tls_cafile": copies.cafile,
            "tls_certfile": copies.certfile,
            "tls_keyfile": copies.keyfile,
        }
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        if ids:
            os.chown(data, *ids)
        if tls and copies:
            # Mosquitto drops root before it loads TLS files: it reads these copies, its own
            copies.cafile.parent.mkdir(mode=0o755, exist_ok=True)
            _write(copies.cafile, tls.cafile.read_bytes(), 0o644, ids)
            _write(copies.certfile, tls.certfile.read_bytes(), 0o644, ids)
            _write(copies.keyfile, tls.keyfile.read_bytes(), 0o600, ids)
        # with a listener of its own, the companion's account is only in its own password file
        boards_users = devices if companion_port is not None else [*devices, companion_user]
        _write(paths["password_file"], password_file_text(secret, boards_users), 0o640, ids)
        if companion_port is not None:
            _write(
                paths["companion_passwd_file"],
                password_file_text(secret, [companion_user]),
                0o640,
                ids,
            )
        _write(paths["acl_file"], acl_text(fleet, companion_user), 0o640, ids)
        _write(
            paths["companion_password_file"],
            keys.mqtt_password(secret, companion_user) + "\n",
            0o600,
        )
        text = mosquitto_conf_text(
            fleet=fleet,
            port=port,
            bind=bind,
            password_file=paths["password_file"],
            acl_file=paths["acl_file"],
            persistence_dir=data,
            tls=copies,
            max_queued=max_queued,
            companion_port=companion_port,
            companion_bind=companion_bind,
            companion_password_file=paths.get("companion_passwd_file"),
        )
        _write(paths["config"], text, 0o644)
    except OSError as exc:
        raise BrokerConfigError(f"{exc.filename or out_dir}: {exc.strerror}") from None
    return paths


def write_secret(path: Path, *, force: bool = False) -> Path:
    """Write a new fleet secret to ``path`` (mode 0600); refuse to replace one unless ``force``."""
    if path.is_dir():
        raise BrokerConfigError(f"{path}: is a directory")
    if path.exists() and not force:
        raise BrokerConfigError(
            f"{path} already exists: replacing the fleet secret changes every board's password "
            "and command key; use --force if that is what you want"
        )
    if not path.parent.is_dir():
        raise BrokerConfigError(f"{path.parent}: no such directory")
    try:
        _write(path, keys.new_secret().decode() + "\n", 0o600)
    except OSError as exc:
        raise BrokerConfigError(f"{path}: {exc.strerror}") from None
    return path
