"""``orrery serve``: run the ingest service (and the rollouts it drives) on a broker."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

from cloud.orrery.cli.common import DbOpt, fail, open_db
from cloud.orrery.fleet import keys
from cloud.orrery.fleet.rollout.orchestrator import Orchestrator
from cloud.orrery.ingest.alerts import AlertRule
from cloud.orrery.ingest.handler import Ingest
from cloud.orrery.ingest.reconcile import MAX_GAP
from cloud.orrery.ingest.service import BrokerAddress, Service, default_group
from cloud.orrery.jsonlog import configure_logging, jlog


def serve(
    db_url: DbOpt = None,
    host: Annotated[str, typer.Option(help="MQTT broker host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="MQTT broker port.")] = 1883,
    username: Annotated[str | None, typer.Option(help="MQTT username.")] = None,
    password_file: Annotated[
        Path | None, typer.Option(help="File holding the MQTT password.")
    ] = None,
    ca_file: Annotated[Path | None, typer.Option(help="CA certificate: connect with TLS.")] = None,
    client_id: Annotated[
        str | None,
        typer.Option(help="Stable client id of this worker (default orrery-ingest-HOST)."),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(
            help="Shared-subscription group (default: derived from the fleet secret, so a board "
            "cannot join it and take a share of other boards' messages)."
        ),
    ] = None,
    fleet: Annotated[str, typer.Option(help="Fleet to serve ('+' for all).")] = "+",
    secret_file: Annotated[
        Path | None, typer.Option(help="Fleet secret (else $ORRERY_SECRET / $ORRERY_SECRET_FILE).")
    ] = None,
    auto_register: Annotated[
        bool, typer.Option(help="Admit unknown devices on first message.")
    ] = False,
    alert: Annotated[
        list[str] | None,
        typer.Option(help="Live alert rule CHANNEL>LEVEL or CHANNEL<LEVEL (repeatable)."),
    ] = None,
    reorder_window: Annotated[
        float, typer.Option(min=0, help="Seconds a hole may stay open before it is a gap.")
    ] = 10.0,
    max_gap: Annotated[
        int,
        typer.Option(
            min=1,
            help="Most readings one gap or loss report may span; a larger one is a protocol "
            "anomaly: logged and kept, never requested nor counted as lost.",
        ),
    ] = MAX_GAP,
    reconcile_every: Annotated[
        float, typer.Option(min=0.1, help="Seconds between reconciliation passes.")
    ] = 2.0,
    rollouts: Annotated[
        bool, typer.Option(help="Drive running rollouts (needs the fleet secret).")
    ] = True,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run the ingest service: store readings exactly once, reconcile gaps, answer pulls."""

    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail(f"--log-level {log_level!r}: expected DEBUG, INFO, WARNING or ERROR")
    configure_logging(log_level)
    try:
        rules = [AlertRule.parse(a) for a in alert or []]
    except ValueError as exc:
        fail(str(exc))
    try:
        secret = keys.load_secret(secret_file)
    except keys.SecretError as exc:
        if secret_file is not None:
            fail(str(exc))
        secret = None
        jlog("no_fleet_secret", 30, detail=f"{exc}; gaps will be reported but no resend is signed")
    password = None
    if password_file is not None:
        try:
            password = password_file.read_text().strip()
        except OSError as exc:
            fail(f"--password-file {password_file}: {exc.strerror}")
    if ca_file is not None and not ca_file.exists():
        fail(f"--ca-file {ca_file}: no such file")
    engine = open_db(db_url)
    ingest = Ingest(
        engine,
        secret=secret,
        auto_register=auto_register,
        alert_rules=rules,
        reorder_window_ms=int(reorder_window * 1000),
        max_gap=max_gap,
    )
    cid = client_id or f"orrery-ingest-{socket.gethostname()}"
    if group is None:
        group = default_group(secret)
    orchestrator = (
        None if secret is None or not rollouts else Orchestrator(engine, secret, owner=cid)
    )
    service = Service(
        ingest,
        BrokerAddress(host, port, username, password, str(ca_file) if ca_file else None),
        client_id=cid,
        group=group,
        fleet=fleet,
        reconcile_every_s=reconcile_every,
        orchestrator=orchestrator,
    )
    service.install_signals()
    service.run()
