"""``orrery serve``: run the ingest service (and the rollouts it drives) on a broker."""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path
from typing import Annotated

import typer

from cloud.orrery.cli.common import DbOpt, check_host, fail, open_db, read_problem, read_text
from cloud.orrery.fleet import commands, keys
from cloud.orrery.fleet.rollout.orchestrator import Orchestrator
from cloud.orrery.ingest.alerts import AlertRule
from cloud.orrery.ingest.handler import Ingest
from cloud.orrery.ingest.reconcile import MAX_GAP
from cloud.orrery.ingest.service import BrokerAddress, Service, default_group
from cloud.orrery.jsonlog import configure_logging, jlog

RESEND_TTL_HELP = "Lifetime of a resend command, in seconds."
MAX_GAP_HELP = (
    "Most readings one gap or loss report may span; a larger one is a protocol anomaly: "
    "logged and kept, never requested nor counted as lost."
)


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
    max_gap: Annotated[int, typer.Option(min=1, help=MAX_GAP_HELP)] = MAX_GAP,
    reconcile_every: Annotated[
        float, typer.Option(min=0.1, help="Seconds between reconciliation passes.")
    ] = 2.0,
    resend_ttl: Annotated[int, typer.Option(min=60, max=604800, help=RESEND_TTL_HELP)] = 3600,
    command_retry: Annotated[
        float,
        typer.Option(min=1, help="Seconds without an ack before a command is published again."),
    ] = 120.0,
    command_retry_max: Annotated[
        float, typer.Option(min=1, help="The longest wait between two publishes (it doubles).")
    ] = 1800.0,
    rollouts: Annotated[
        bool, typer.Option(help="Drive running rollouts (needs the fleet secret).")
    ] = True,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    connect_timeout: Annotated[
        float,
        typer.Option(
            min=0,
            help="Exit (code 1) after this many seconds without a connection to the broker, at "
            "the start or after losing it; 0 retries forever.",
        ),
    ] = 180.0,
) -> None:
    """Run the ingest service: store readings exactly once, reconcile gaps, answer pulls."""

    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        fail(f"--log-level {log_level!r}: expected DEBUG, INFO, WARNING or ERROR")
    check_host(host, "--host")
    try:
        rules = [AlertRule.parse(a) for a in alert or []]
    except ValueError as exc:
        fail(str(exc))
    why = None
    named = secret_file or os.environ.get("ORRERY_SECRET") or os.environ.get("ORRERY_SECRET_FILE")
    try:
        secret = keys.load_secret(secret_file)
    except keys.SecretError as exc:
        if named:  # a secret was named but cannot be used: refuse rather than run without it
            fail(str(exc))
        secret = None
        why = f"{exc}; gaps will be reported but no resend is signed"
        if rollouts:
            why += ", and rollouts are not driven"
    password = None
    if password_file is not None:
        password = read_text(password_file, "--password-file").strip()
    if ca_file is not None:
        read_text(ca_file, "--ca-file")
        try:
            ssl.create_default_context(cafile=str(ca_file))
        except (ssl.SSLError, OSError, ValueError) as exc:
            fail(f"--ca-file {ca_file}: not a CA certificate in PEM form ({read_problem(exc)})")
    if command_retry_max < command_retry:
        fail(
            f"--command-retry-max {command_retry_max:g} is below --command-retry {command_retry:g}"
        )
    configure_logging(log_level)
    if secret is None:
        jlog("no_fleet_secret", 30, detail=why)
    engine = open_db(db_url, create=True)
    ingest = Ingest(
        engine,
        secret=secret,
        auto_register=auto_register,
        alert_rules=rules,
        reorder_window_ms=int(reorder_window * 1000),
        resend_ttl_s=resend_ttl,
        retry=commands.RetryPolicy(command_retry, command_retry_max),
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
        connect_timeout_s=connect_timeout,
        orchestrator=orchestrator,
    )
    service.install_signals()
    service.run()
    if service.failure:
        fail(service.failure)
