"""Benchmark: backlogs of any shape drain (issue 10, part 1), on PostgreSQL, against the emulator
with its rate limit out of the way and no latency.

    make bench          # or: .venv/bin/python -m bench.backlog --scale 0.1

Three shapes of pending stock rows, each in a fresh PostgreSQL database written with one
set-based INSERT: 1,000,000 rows over 10,000 SKUs; 1,000,000 rows on one SKU; 100,000 rows over
100,000 SKUs (``--scale`` multiplies rows and SKUs, for a quick run). The emulator runs in its
own process (``skysync sandbox``, as SkyHub is elsewhere), and the SKUs exist in it beforehand
(seeded through its admin API, no requests). Each shape is drained in this process as
``skysync drain`` does (batches of SKYSYNC_BATCH_SIZE, the pushes on threads).

For each shape it reports rows/s from the first claim to the last row final, requests sent,
whether every SKU ends with its newest value, and the peak RSS of this process (the relay's)
when the drain ends, before the check reads SkyHub's whole catalogue back (100,000 products
as JSON would otherwise count).
Then the raw-SQL baseline on the same rows, written afresh into a database of their own:
``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n)`` (n = 10,000) in a loop marking
them done with no HTTP, and the ratio to it. Goals (issue 10): >= 20,000 rows/s for the first
two shapes, >= 0.5 of the baseline, peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import create_pg_database, drop_pg_database  # noqa: E402

import skysync.config  # noqa: E402
from skysync.relay import Relay, drain  # noqa: E402
from skysync.skyhub.client import SkyHubClient  # noqa: E402
from skysync.store.db import dispose_engines, get_engine, migrate  # noqa: E402

CREDS = {"email": "bench@skysync.local", "api_key": "bench-key", "account_key": "bench-acct"}
SHAPES = {  # name: (rows, skus)
    "1M rows over 10k SKUs": (1_000_000, 10_000),
    "1M rows on one SKU": (1_000_000, 1),
    "100k rows over 100k SKUs": (100_000, 100_000),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def write_backlog(db_url: str, rows: int, skus: int) -> None:
    """``rows`` stock rows, round-robin over ``skus`` SKUs, qty rising with the id."""
    sql = (
        "INSERT INTO skysync_outbox (kind, ref, payload) "
        "SELECT 'stock', 'BL-' || lpad((g % :skus)::text, 6, '0'), jsonb_build_object('qty', g) "
        "FROM generate_series(1, :rows) g"
    )
    with get_engine(db_url).begin() as conn:
        conn.execute(sa.text(sql), {"rows": rows, "skus": skus})
        conn.execute(sa.text("ANALYZE skysync_outbox"))


@contextmanager
def emulator() -> Iterator[httpx.Client]:
    """``skysync sandbox`` in its own process, limits out of the way; an admin client on it."""
    cli = "from skysync.entrypoints.cli import main; main()"
    command = [sys.executable, "-c", cli, "sandbox", "--port", "0"]
    command += ["--rate-limit", "1000000"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYSYNC_SKYHUB")}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "SkyHub emulator listening on http://..."
        if "listening on " not in line:
            raise RuntimeError(f"the emulator did not start: {line!r}")
        with httpx.Client(base_url=line.split("listening on ")[1].strip(), timeout=120) as admin:
            yield admin
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def seed_emulator(admin: httpx.Client, skus: int) -> None:
    """The SKUs exist in SkyHub already (set-up, not measured: no requests)."""
    for start in range(0, skus, 10_000):
        products = [
            {"sku": f"BL-{i:06d}", "name": f"backlog {i}", "qty": 0}
            for i in range(start, min(skus, start + 10_000))
        ]
        admin.post("/_sandbox/products", json={"products": products}).raise_for_status()


def newest_values(db_url: str) -> dict[str, int]:
    sql = (
        "SELECT DISTINCT ON (ref) ref, (payload->>'qty')::int FROM skysync_outbox "
        "WHERE kind = 'stock' ORDER BY ref, id DESC"
    )
    with get_engine(db_url).connect() as conn:
        return {ref: qty for ref, qty in conn.execute(sa.text(sql))}


def run_relay(db_url: str, base_url: str, batch_size: int, concurrency: int) -> dict[str, Any]:
    settings = skysync.config.load_settings(database_url=db_url, batch_size=batch_size)
    with SkyHubClient(base_url, **CREDS) as client:
        relay = Relay(settings, client, concurrency=concurrency)
        started = time.perf_counter()
        drained = drain(relay.deps, max_batches=1_000_000)
        elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "batches": drained.batches, "counts": drained.counts}


def run_baseline(rows: int, skus: int, batch_size: int) -> float:
    """The same backlog, freshly written into a database of its own (as the relay found its
    own), marked done by raw SQL alone; returns seconds. (Run on the table the relay has just
    drained, the baseline would pay for the relay's dead row versions and swing with them.)"""
    db_url = create_pg_database("skysync_bench_base")
    try:
        migrate(db_url)
        write_backlog(db_url, rows, skus)
        step = sa.text(
            "UPDATE skysync_outbox o SET state = 'sent', finished_at = now(), updated_at = now() "
            "FROM (SELECT id FROM skysync_outbox WHERE state = 'pending' ORDER BY id "
            "FOR UPDATE SKIP LOCKED LIMIT :n) s WHERE o.id = s.id"
        )
        started = time.perf_counter()
        while True:
            with get_engine(db_url).begin() as conn:
                if not conn.execute(step, {"n": batch_size}).rowcount:
                    break
        return time.perf_counter() - started
    finally:
        dispose_engines()
        drop_pg_database(db_url)


def run_shape(name: str, rows: int, skus: int, args: argparse.Namespace) -> dict[str, Any]:
    db_url = create_pg_database("skysync_bench")
    try:
        with emulator() as admin:
            migrate(db_url)
            write_backlog(db_url, rows, skus)
            seed_emulator(admin, skus)
            expected = newest_values(db_url)
            result = run_relay(db_url, str(admin.base_url), args.batch_size, args.concurrency)
            relay_rss = peak_rss_mb()  # before this process reads SkyHub's whole state back
            state = admin.get("/_sandbox/state").json()["products"]
            requests = sum(admin.get("/_sandbox/requests").json()["counts"].values())
        stale = sum(1 for sku, qty in expected.items() if state[sku].get("qty") != qty)
        dispose_engines()
        drop_pg_database(db_url)
        db_url = ""
        baseline = run_baseline(rows, skus, args.baseline_limit)
        return {
            "shape": name,
            "rows": rows,
            "skus": skus,
            "seconds": round(result["seconds"], 2),
            "rows_per_s": round(rows / result["seconds"]),
            "batches": result["batches"],
            "requests": requests,
            "final": {k: v for k, v in result["counts"].items() if v},
            "stale_skus": stale,
            "baseline_rows_per_s": round(rows / baseline),
            "ratio_to_baseline": round(baseline / result["seconds"], 3),
            "peak_rss_mb": round(relay_rss),
        }
    finally:
        dispose_engines()
        if db_url:
            drop_pg_database(db_url)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply rows and SKUs")
    parser.add_argument("--batch-size", type=int, default=500, help="SKYSYNC_BATCH_SIZE")
    parser.add_argument("--concurrency", type=int, default=8, help="push threads")
    parser.add_argument(
        "--baseline-limit", type=int, default=10_000, help="rows per raw-SQL baseline UPDATE"
    )
    parser.add_argument("--shape", choices=list(SHAPES), action="append", help="default: all")
    parser.add_argument("--json", action="store_true", help="print only the JSON results")
    args = parser.parse_args()
    results = []
    for name in args.shape or list(SHAPES):
        rows, skus = SHAPES[name]
        rows, skus = max(1, int(rows * args.scale)), max(1, int(skus * args.scale))
        results.append(run_shape(name, rows, skus, args))
        if not args.json:
            print(json.dumps(results[-1]), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return (
        0
        if all(r["stale_skus"] == 0 and set(r["final"]) <= {"sent", "superseded"} for r in results)
        else 1
    )


if __name__ == "__main__":
    sys.exit(main())
