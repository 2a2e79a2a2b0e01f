"""Ingest never stops on one message (issue 14, item 1), on SQLite and PostgreSQL.

- Text a database cannot store (U+0000, lone surrogates) is refused at decode, with the field
  named, on both databases: the ack with a NUL in its detail that once stopped ingest on
  PostgreSQL for good (the group rolled back with ``psycopg.DataError`` and ``serve`` retried it
  forever) is dead-lettered, and what comes after it is stored.
- The general rule: a group the database refuses because of what it holds is split until the
  message causing it is found; that one is dead-lettered with the database's reason and acked,
  the rest stored. The database here really refuses (a trigger raising a data exception on
  one value), nothing stands in for it.
- A hypothesis test against PostgreSQL feeds every message kind with arbitrary Unicode (NUL
  and surrogates included), messages the database refuses, and valid batches, through the
  same ``Ingest.store`` that ``serve`` runs: it never stops and every valid reading is stored
  once.
"""

from __future__ import annotations

import itertools
import json

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.orrery.bench import ingest as bench
from cloud.orrery.clock import now_ms
from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import DEAD_LETTERS, DEVICES, READINGS
from cloud.orrery.fleet import commands
from cloud.orrery.ingest.handler import Ingest, Message
from shared.wire import codec
from tests.support.ingestkit import (
    REFUSED_VALUE,
    refuse_value,
    serving,
    store_failures,
    wait_for,
)

SECRET = b"never-stops-fleet-secret-0123456789"
NOW = 1_790_000_100_000
ANCHOR = (0, 0, 1_790_000_000, 0)  # uptime 0 was 1_790_000_000 s unix


def _setup(db_url: str, fleet: str, names: list[str]) -> sa.Engine:
    engine = engine_for(db_url)
    with engine.begin() as c:
        c.execute(sa.insert(DEVICES), [{"name": n, "fleet": fleet, "created_ms": 0} for n in names])
    return engine


def _batch(first: int, n: int, value: int = 7, boot: int = 1) -> bytes:
    return codec.encode_batch(
        boot, first, [(s, 0, value, 0) for s in range(first, first + n)], codec.SYNCED, ANCHOR
    )


def _rows(engine: sa.Engine, sql: str, **kw) -> list:
    with engine.connect() as c:
        return c.execute(sa.text(sql), kw).all()


@pytest.mark.parametrize(
    "detail",
    [b"a\\u0000", b"a\\ud800", b"\\udfff"],
    ids=["nul", "high-surrogate", "low-surrogate"],
)
def test_an_ack_whose_detail_a_database_cannot_store_is_dead_lettered(
    db_url, broker, caplog, detail
):
    """The issue's message, on a command the device really has: refused at decode with a
    clear reason (on both databases alike), acked, and the readings behind it stored."""
    fleet = "acks"
    engine = _setup(db_url, fleet, ["d1"])
    with engine.begin() as c:
        did = c.execute(sa.select(DEVICES.c.id).where(DEVICES.c.name == "d1")).scalar()
        commands.queue(conn=c, secret=SECRET, device_id=did, device="d1", fleet=fleet,
                       cmd_id="zz", kind="reboot", args={}, source="test", now_ms=now_ms())  # fmt: skip
    ack = b'{"v":1,"id":"zz","code":0,"detail":"' + detail + b'"}'
    ingest = Ingest(engine, secret=SECRET)
    try:
        with serving(ingest, broker.port, fleet) as svc:
            bench.publish(broker.port, [
                (codec.topic(fleet, "d1", codec.ACKS), ack),
                (codec.topic(fleet, "d1", codec.READINGS), _batch(1, 10)),
            ])  # fmt: skip
            wait_for(lambda: svc.stored == 2, 20, "both messages stored and acked",
                     lambda: f"stored {svc.stored}; readings {_rows(engine, 'SELECT count(*) FROM readings')}")  # fmt: skip
            # ingest goes on: a later batch is stored as well
            bench.publish(broker.port, [(codec.topic(fleet, "d1", codec.READINGS), _batch(11, 5))])
            wait_for(lambda: svc.stored == 3, 20, "a later batch stored")
        assert store_failures(caplog) == 0
        assert _rows(engine, "SELECT count(*) FROM readings") == [(15,)]
        (reason, payload), *more = _rows(engine, "SELECT reason, payload FROM dead_letters")
        assert not more
        char = "U+0000" if b"0000" in detail else f"U+{detail[-4:].decode().upper()}"
        assert reason == f"malformed ack: detail holds {char}, which a database cannot store"
        assert bytes(payload) == ack
        # the command was not touched by the refused ack
        assert _rows(engine, "SELECT acked_ms, ack_detail FROM commands") == [(None, None)]
    finally:
        engine.dispose()


def test_a_message_the_database_refuses_is_isolated_and_dead_lettered(db_url, broker, caplog):
    """The general rule: the group is split until the one message the database refuses is
    found; it is dead-lettered with the database's reason and acked, every other message of
    the group is stored, and what comes later flows on."""
    fleet = "poison"
    names = [f"d{i}" for i in range(8)]
    engine = _setup(db_url, fleet, names)
    refuse_value(engine)
    poison = _batch(1, 20, value=REFUSED_VALUE, boot=3)
    msgs = [(codec.topic(fleet, n, codec.READINGS), _batch(1, 20)) for n in names]
    msgs.insert(5, (codec.topic(fleet, "d2", codec.READINGS), poison))
    ingest = Ingest(engine, secret=SECRET)
    try:
        with serving(ingest, broker.port, fleet) as svc:
            bench.publish(broker.port, msgs)
            wait_for(lambda: svc.stored == len(msgs), 30, "every message stored or dead-lettered",
                     lambda: f"stored {svc.stored} of {len(msgs)}")  # fmt: skip
            bench.publish(broker.port, [(codec.topic(fleet, "d0", codec.READINGS), _batch(21, 5))])
            wait_for(lambda: svc.stored == len(msgs) + 1, 20, "a later batch stored")
        assert store_failures(caplog) == 0  # isolated at once, never retried as it was
        per = dict(_rows(engine, "SELECT d.name, count(*) FROM readings r"
                                 " JOIN devices d ON d.id = r.device_id GROUP BY d.name"))  # fmt: skip
        assert per == {n: 25 if n == "d0" else 20 for n in names}
        assert _rows(engine, "SELECT count(*) FROM readings WHERE value = :v", v=REFUSED_VALUE) == [
            (0,)
        ]
        ((device, reason, payload),) = _rows(
            engine, "SELECT device, reason, payload FROM dead_letters"
        )
        assert device == "d2" and bytes(payload) == poison
        assert reason.startswith("store failed: ") and f"value {REFUSED_VALUE} refused" in reason
        assert sum(r for (r,) in _rows(engine, "SELECT received FROM devices")) == 8 * 20 + 5
    finally:
        engine.dispose()


def test_a_database_that_is_away_is_waited_for_not_dead_lettered(tmp_path):
    """Errors that do not come from the messages (here: the database file is locked by
    another writer) keep the whole group: ``store`` raises, nothing is dead-lettered, and
    the group is stored once the database is back."""
    url = f"sqlite:///{tmp_path / 'away.db'}"
    engine = _setup(url, "f", ["d1"])
    ingest = Ingest(sa.create_engine(url, connect_args={"timeout": 0.1}), secret=SECRET)
    msgs = [Message(codec.topic("f", "d1", codec.READINGS), _batch(1, 5))]
    done: list[list[int]] = []
    blocker = engine.connect()
    blocker.exec_driver_sql("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(sa.exc.OperationalError, match="locked"):
            ingest.store(msgs, lambda idx, out: done.append(idx))
        assert done == []
    finally:
        blocker.rollback()
        blocker.close()
    ingest.store(msgs, lambda idx, out: done.append(idx))
    assert done == [[0]]
    assert _rows(engine, "SELECT count(*) FROM readings") == [(5,)]
    assert _rows(engine, "SELECT count(*) FROM dead_letters") == [(0,)]
    ingest.engine.dispose()
    engine.dispose()


def test_a_message_that_not_even_its_dead_letter_can_hold_goes_to_the_log(db_url, caplog):
    """The last resort: the database refuses the message and its dead letter too. The log
    keeps it whole (its payload in hex), it is acked all the same, the rest is stored."""
    engine = _setup(db_url, "f", ["d1"])
    refuse_value(engine)
    with engine.begin() as c:  # and no dead letter for d1 either
        if engine.dialect.name == "postgresql":
            c.execute(sa.text(
                "CREATE FUNCTION refuse_dead() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " RAISE EXCEPTION 'no dead letters' USING ERRCODE = '22023'; END $$"
            ))  # fmt: skip
            c.execute(sa.text("CREATE TRIGGER refuse_dead BEFORE INSERT ON dead_letters"
                              " FOR EACH ROW EXECUTE FUNCTION refuse_dead()"))  # fmt: skip
        else:
            c.execute(sa.text("CREATE TRIGGER refuse_dead BEFORE INSERT ON dead_letters"
                              " BEGIN SELECT RAISE(ABORT, 'no dead letters'); END"))  # fmt: skip
    poison = _batch(6, 3, value=REFUSED_VALUE)
    msgs = [Message(codec.topic("f", "d1", codec.READINGS), b) for b in (_batch(1, 5), poison)]
    done: list[int] = []
    Ingest(engine, secret=SECRET).store(msgs, lambda idx, out: done.extend(idx))
    assert sorted(done) == [0, 1]
    assert _rows(engine, "SELECT count(*) FROM readings") == [(5,)]
    (line,) = [r.getMessage() for r in caplog.records if '"message_dropped"' in r.getMessage()]
    logged = json.loads(line)
    assert logged["payload"] == poison.hex() and "no dead letters" in logged["error"]
    assert f"value {REFUSED_VALUE} refused" in logged["reason"]
    engine.dispose()


# --- hypothesis: every message kind with arbitrary Unicode, against PostgreSQL ---------------

# any code point, lone surrogates included, and NUL often
TEXT = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=24)
    | st.text(st.characters(exclude_categories=()), max_size=24),
    st.sampled_from(["a\x00", "\x00", "\ud800", "x\udfffy", "\ud83d", "ok"]),
)


def _hostile(kind: str, text: str) -> tuple[str, bytes]:
    # (topic kind, payload): a message of ``kind`` with ``text`` in its text fields
    templates = {
        codec.STATE: {"v": 1, "online": True, "fw": text, "wf": None, "wf_ver": None,
                      "wf_hash": None, "boot": 1, "backlog": 0, "synced": False,
                      "anchor": None, "last_seq": None, "extra": {"note": text}},
        codec.EVENTS: {"v": 1, "boot": 1, "seq": 1, "up_s": 1, "up_ms": 0, "state": text,
                       "event": "e", "value": 1},
        codec.ACKS: {"v": 1, "id": "zz", "code": 0, "detail": text},
        codec.LOSS: {"v": 1, "boot": 1, "first": 1, "last": 2, "reason": text},
        codec.PULL: {"v": 1, "boot": text},
        codec.CMD: {"v": 1, "b": text, "s": "00"},
    }  # fmt: skip
    if kind in (codec.READINGS, codec.LOG):  # binary
        return kind, text.encode("utf-8", "surrogatepass")
    if kind == "raw":  # the same ack as raw UTF-8, surrogates and all (not valid UTF-8)
        doc = json.dumps(templates[codec.ACKS], ensure_ascii=False)
        return codec.ACKS, doc.encode("utf-8", "surrogatepass")
    return kind, json.dumps(templates[kind]).encode()


MESSAGE = st.one_of(
    st.tuples(st.just("valid"), st.integers(1, 40)),
    st.tuples(st.just("refused"), st.integers(1, 40)),
    st.tuples(
        st.just("hostile"),
        st.sampled_from([*codec.TOPIC_KINDS, "raw"]),
        TEXT,
        st.booleans(),  # hostile text in the topic's device segment as well
    ),
)
_example = itertools.count(1)


@pytest.fixture(scope="module")
def pg_store():
    """One PostgreSQL database for all examples (each uses devices of its own), refusing
    ``REFUSED_VALUE`` like the test above; the same ``Ingest.store`` that ``serve`` runs."""
    from tests.conftest import _pg_or_skip
    from tests.support import pg

    _pg_or_skip()
    with pg.fresh_database() as url:
        engine = engine_for(url)
        refuse_value(engine)
        yield Ingest(engine, secret=SECRET, auto_register=True, clock=lambda: NOW)
        engine.dispose()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(MESSAGE, min_size=1, max_size=12))
def test_fuzz_ingest_never_stops_and_stores_every_valid_reading_once(pg_store, plan):
    ingest = pg_store
    k = next(_example)
    fleet = f"fz{k}"
    msgs: list[Message] = []
    valid: dict[str, int] = {}  # device -> readings it must end with
    refused: set[int] = set()
    for i, (what, *args) in enumerate(plan):
        dev = f"x{k}-{i}"
        if what == "valid":
            valid[dev] = args[0]
            msgs.append(Message(codec.topic(fleet, dev, codec.READINGS), _batch(1, args[0])))
        elif what == "refused":
            refused.add(len(msgs))
            msgs.append(
                Message(codec.topic(fleet, dev, codec.READINGS), _batch(1, args[0], REFUSED_VALUE))
            )
        else:
            kind, text, in_topic = args
            kind, payload = _hostile(kind, text)
            device = dev + text if in_topic else dev
            msgs.append(Message(f"orrery/{fleet}/{device}/{kind}", payload))
    # the valid batches again, redelivered in the same group: still stored once
    msgs += [Message(codec.topic(fleet, d, codec.READINGS), _batch(1, n)) for d, n in valid.items()]
    # an ack against a command the device really has, so that its detail would be written
    with ingest.engine.begin() as c:
        c.execute(sa.insert(DEVICES), [{"name": f"x{k}-{i}", "fleet": fleet, "created_ms": 0}
                                       for i in range(len(plan))])  # fmt: skip
        for i in range(len(plan)):
            did = c.execute(sa.select(DEVICES.c.id).where(DEVICES.c.name == f"x{k}-{i}")).scalar()
            commands.queue(c, SECRET, device_id=did, device=f"x{k}-{i}", fleet=fleet,
                           cmd_id="zz", kind="reboot", args={}, source="t", now_ms=NOW)  # fmt: skip

    committed: list[int] = []
    ingest.store(msgs, lambda idx, out: committed.extend(idx))  # never raises: nothing stops it

    assert sorted(committed) == list(range(len(msgs))), "every message acked exactly once"
    with ingest.engine.connect() as c:
        stored = dict(
            c.execute(
                sa.select(DEVICES.c.name, sa.func.count(READINGS.c.seq))
                .join(READINGS, READINGS.c.device_id == DEVICES.c.id)
                .where(DEVICES.c.fleet == fleet)
                .group_by(DEVICES.c.name)
            ).all()
        )
        received = dict(
            c.execute(
                sa.select(DEVICES.c.name, DEVICES.c.received).where(DEVICES.c.fleet == fleet)
            ).all()
        )
        failed = c.execute(
            sa.select(DEAD_LETTERS.c.topic).where(
                DEAD_LETTERS.c.topic.like(f"orrery/{fleet}/%"),
                DEAD_LETTERS.c.reason.like("store failed:%"),
            )
        ).all()
    assert stored == valid, "every valid reading stored once, nothing else"
    assert {d: received[d] for d in valid} == valid
    # only the batches the database refuses fail there: every other hostile message was
    # refused at decode (or stored, when its text was fine)
    assert sorted(t for (t,) in failed) == sorted(msgs[i].topic for i in refused)
