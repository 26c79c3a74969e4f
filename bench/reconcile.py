"""Benchmark: reconciling 10,000 SKUs against the emulator at SkyHub's real listing rate limit.

    make bench          # or: .venv/bin/python -m bench.reconcile [--skus 10000]

Set-up (not measured, no requests): a fresh PostgreSQL database holding what skysync would after
delivering the catalogue (one ``sent`` product row per product, the item table's acknowledged
values and last applied rows), and the emulator holding the same catalogue: 90 % simple products
and 10 % products with one variation (so 10,000 SKUs are 9,091 products, about 91 pages of 100).
Then 1 % of the SKUs are changed behind skysync's back.

Measured: one ``reconcile`` run as ``skysync reconcile`` does it, through the shared rate limiter
on Redis (SKYSYNC_RATE_LIMIT 8.5/s, the default, in the ``products:GET`` bucket), against the
emulator's own 9/s limit on GET /products. It reports the elapsed time, the pages read, the
floor ``pages / 9`` (the listing's rate limit at SkyHub) and the ratio to it; goal (issue 11):
ratio <= 1.2. It also checks that exactly the changed SKUs were found and that SkyHub answered
no 429. Exit 1 when the goal or a check is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import create_pg_database, drop_pg_database  # noqa: E402

import skysync.config  # noqa: E402
from skysync.bootstrap import build_limiter  # noqa: E402
from skysync.emulator import Sandbox, SandboxConfig  # noqa: E402
from skysync.relay import Relay  # noqa: E402
from skysync.relay.reconcile import reconcile  # noqa: E402
from skysync.skyhub.client import SkyHubClient  # noqa: E402
from skysync.store.db import dispose_engines, get_engine, migrate  # noqa: E402
from skysync.store.models import Item, OutboxRow, utcnow  # noqa: E402

CREDS = {"email": "bench@skysync.local", "api_key": "bench-key", "account_key": "bench-acct"}
SKYHUB_LISTING_RATE = 9.0  # GET /products at SkyHub (skyhub-api.md section 5)
GOAL = 1.2


def catalogue(skus: int) -> list[dict[str, Any]]:
    """Products (one in eleven with a variation) adding up to ``skus`` SKUs."""
    products: list[dict[str, Any]] = []
    count = i = 0
    while count < skus:
        product: dict[str, Any] = {
            "sku": f"RB-{i:06d}",
            "name": f"Produto {i}",
            "price": 10.0 + i % 500,
            "qty": i % 50,
        }
        count += 1
        if i % 11 == 10 and count < skus:
            product["variations"] = [{"sku": f"RB-{i:06d}-V", "qty": i % 7, "price": 20.0}]
            count += 1
        products.append(product)
        i += 1
    return products


def seed_database(db_url: str, products: list[dict[str, Any]]) -> None:
    """What skysync holds after delivering ``products``: sent rows and acknowledged items."""
    now = utcnow()
    rows = [
        {"id": n + 1, "kind": "product", "ref": p["sku"], "payload": p, "state": "sent"}
        for n, p in enumerate(products)
    ]
    items = []
    for row in rows:
        p = row["payload"]
        fields = {k: v for k, v in p.items() if k not in ("sku", "variations")}
        items.append(_item(p["sku"], None, fields, row["id"], now))
        for v in p.get("variations", []):
            vfields = {k: x for k, x in v.items() if k != "sku"}
            items.append(_item(v["sku"], p["sku"], vfields, row["id"], now))
    with get_engine(db_url).begin() as conn:
        conn.execute(
            sa.insert(OutboxRow),
            [{**r, "finished_at": now, "created_at": now, "available_at": now} for r in rows],
        )
        conn.execute(sa.insert(Item), items)
        conn.exec_driver_sql(
            "SELECT setval('skysync_outbox_id_seq', (SELECT max(id) FROM skysync_outbox))"
        )
        conn.exec_driver_sql("ANALYZE")


def _item(sku: str, parent: str | None, fields: dict[str, Any], row_id: int, now: Any) -> dict:
    return {
        "sku": sku,
        "parent_sku": parent,
        "in_skyhub": True,
        "acknowledged": fields,
        "last_applied": dict.fromkeys(fields, row_id),
        "attempt": {},
        "updated_at": now,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skus", type=int, default=10_000)
    parser.add_argument("--rate-limit", type=float, default=8.5, help="SKYSYNC_RATE_LIMIT")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--redis-db", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()

    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    redis.Redis.from_url(redis_url).flushdb()
    db_url = create_pg_database("skysync_bench_reconcile")
    migrate(db_url)
    products = catalogue(args.skus)
    seed_database(db_url, products)
    sandbox = Sandbox(SandboxConfig(latency_ms=args.latency_ms, link_delay=None, **CREDS))
    for product in products:
        sandbox.seed_product(product)
    changed = sorted(p["sku"] for p in products[:: max(1, len(products) // (args.skus // 100))])
    for sku in changed:
        sandbox.change_product(sku, {"qty": 999})
    base_url = sandbox.start()
    settings = skysync.config.load_settings(
        database_url=db_url, redis_url=redis_url, rate_limit=args.rate_limit
    )
    client = SkyHubClient(base_url, limiter=build_limiter(settings), **CREDS)
    try:
        relay = Relay(settings, client)
        started = time.monotonic()
        report = reconcile(relay.deps)
        elapsed = time.monotonic() - started
        listing = [e for e in sandbox.request_log() if e["route"] == "/products"]
        floor = report.pages / SKYHUB_LISTING_RATE
        result = {
            "skus": args.skus,
            "products": len(products),
            "pages": report.pages,
            "skus_compared": report.skus_compared,
            "elapsed_s": round(elapsed, 2),
            "floor_s (pages / 9 per s)": round(floor, 2),
            "ratio": round(elapsed / floor, 3),
            "ratio_to_our_pace (pages / rate_limit)": round(
                elapsed / (report.pages / args.rate_limit), 3
            ),
            "drift_found": len(report.drift),
            "drift_made": len(changed),
            "answers_429": sum(1 for e in listing if e["status"] == 429),
        }
    finally:
        client.close()
        sandbox.stop()
        dispose_engines()
        drop_pg_database(db_url)
        redis.Redis.from_url(redis_url).flushdb()
    ok = (
        result["ratio"] <= GOAL
        and sorted(d.sku for d in report.drift) == changed
        and result["skus_compared"] == args.skus
        and result["answers_429"] == 0
    )
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>40}: {value}")
        print(f"{'goal (ratio <= 1.2, all drift found)':>40}: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
