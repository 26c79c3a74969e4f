"""`skysync run`: the whole daemon in one process. A Celery worker (threads pool) with embedded
beat, on whatever broker Settings name (a SQLite file by default: no server needed), and, when no
SkyHub credentials are configured, the built-in SkyHub emulator, announced loudly."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from skysync.config import DEFAULT_SKYHUB_URL, Settings, mask_dsn

if TYPE_CHECKING:
    from skysync.emulator import Sandbox

log = logging.getLogger("skysync")

DEMO_ROWS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "product",
        "DEMO-CANECA-AZUL",
        {
            "name": "[DEMO] Caneca azul 300 ml",
            "description": "Demo data seeded by `skysync run --demo`.",
            "status": "enabled",
            "qty": 12,
            "price": 39.9,
            "brand": "skysync demo",
            "images": ["https://example.com/demo/caneca-azul.jpg"],
            "categories": [{"code": "demo", "name": "Demo > Cozinha"}],
        },
    ),
    ("price", "DEMO-CANECA-AZUL", {"price": 42.5, "promotional_price": 37.9}),
    ("stock", "DEMO-CANECA-AZUL", {"qty": 9}),
    ("stock", "DEMO-CANECA-AZUL", {"qty": 0}),
    ("price", "DEMO-NAO-EXISTE", {"price": 10.0}),
    ("price", "DEMO-PRECO-RUIM", {"price": "12,50"}),
]


def seed_demo(settings: Settings) -> int:
    """Write the demo rows when the outbox is empty; return how many were written."""

    from skysync.bootstrap import build_database
    from skysync.store import outbox, outbox_reads

    with build_database(settings).scope() as session:
        if not outbox_reads.is_empty(session):
            return 0
        # Plain rows, as an ERP would INSERT them (not validated): the relay rejects the bad one.
        for kind, ref, payload in DEMO_ROWS:
            outbox.insert_unchecked(session, kind, ref, payload)
    return len(DEMO_ROWS)


def _banner(lines: list[str]) -> None:
    width = max(len(line) for line in lines) + 4
    click.echo("=" * width, err=True)
    for line in lines:
        click.echo(f"  {line}", err=True)
    click.echo("=" * width, err=True)


def run_daemon(settings: Settings, *, demo: bool, concurrency: int, emulator_port: int) -> None:
    """`skysync run`: migrate, start the emulator when there is no SkyHub account, seed the
    demo, say where everything is, then one Celery worker with embedded beat until stopped."""
    from skysync.logs import configure_logging
    from skysync.store.db import migrate

    configure_logging(settings.log_level, secrets=settings.secret_values())
    migrate(settings.database_url)
    sandbox = _start_emulator(settings, emulator_port)
    seeded = seed_demo(settings) if demo else 0
    demo_orders = 0
    if demo and sandbox is not None:
        # The marketplace side of the demo: two new orders waiting in the emulator's queue.
        for code in ("DEMO Lojas Americanas-0001-01", "DEMO Submarino-0002-01"):
            sandbox.seed_order({"code": code, "status": "payment_received"})
            demo_orders += 1
    _announce(settings, seeded, demo_orders)
    try:
        _run_worker(settings, concurrency)
    finally:
        if sandbox is not None:
            sandbox.stop()


def _start_emulator(settings: Settings, port: int) -> Sandbox | None:
    """The built-in emulator, announced loudly, when no SkyHub account is configured and the
    target is SkyHub itself (never send anonymous requests to SkyHub)."""
    if settings.has_skyhub_credentials or settings.skyhub_url != DEFAULT_SKYHUB_URL:
        return None
    from skysync import bootstrap
    from skysync.emulator import Sandbox, SandboxConfig

    sandbox = Sandbox(SandboxConfig(port=port))
    url = sandbox.start()
    bootstrap.use_emulator(url)
    _banner(
        [
            "NO SKYHUB CREDENTIALS: talking to the BUILT-IN SKYHUB EMULATOR, not to SkyHub.",
            f"Emulator: {url}  (state: {url}/_sandbox/state)",
            "Set SKYSYNC_SKYHUB_EMAIL, SKYSYNC_SKYHUB_API_KEY and SKYSYNC_SKYHUB_ACCOUNT_KEY",
            "to deliver to your SkyHub account.",
        ]
    )
    return sandbox


def _announce(settings: Settings, seeded: int, demo_orders: int) -> None:
    """Where the data lives, how often things run, and what to type to watch them."""
    where = [
        f"database: {mask_dsn(settings.database_url)}",
        f"broker:   {mask_dsn(settings.effective_broker_url)}",
        f"relay every {settings.sync_interval:.0f} s, orders every "
        f"{settings.order_poll_interval:.0f} s; both run once now at start",
        "watch:    skysync status  |  skysync outbox list  |  skysync item show SKU",
        "          skysync orders list  |  skysync trigger (a batch now)",
    ]
    if seeded:
        where.insert(0, f"seeded {seeded} DEMO rows (SKUs DEMO-*) into the empty outbox")
    if demo_orders:
        where.insert(1, f"seeded {demo_orders} DEMO orders into the emulator's order queue")
    _banner(where)


def _run_worker(settings: Settings, concurrency: int) -> None:
    """One Celery worker (threads pool) with embedded beat; a relay batch and an order pull as
    soon as it is ready, instead of waiting for beat's first tick."""
    from celery.signals import worker_ready

    from skysync.celery_app import app

    def _first_batch(**_kw: object) -> None:
        from skysync.tasks import pull_orders, relay_batch

        relay_batch.delay()
        pull_orders.delay()

    worker_ready.connect(_first_batch, weak=False)
    app.worker_main(
        argv=[
            "worker",
            "--beat",
            f"--schedule={_beat_schedule_path(settings)}",
            "--pool=threads",
            f"--concurrency={concurrency}",
            f"--loglevel={settings.log_level}",
            "--without-gossip",
            "--without-mingle",
            "--hostname=skysync@%h",
        ]
    )


def _beat_schedule_path(settings: Settings) -> Path:
    base = settings.sqlite_path or Path("skysync.db")
    return base.with_name(base.stem + ".beat-schedule")
