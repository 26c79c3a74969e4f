"""Benchmark: how fast a backlog drains through a real Celery worker, against the emulator with
SkyHub's limits (9 requests/s per bucket) and 200 ms of latency per request.

    make bench                      # or: .venv/bin/python -m bench.relay_throughput --rows 300
    .venv/bin/python -m bench.relay_throughput --shape mixed     # in make bench too

What it does: creates a fresh PostgreSQL database, starts the SkyHub emulator in this process,
sets up what the store already has (limits off for the set-up), writes the rows to send into the
outbox, starts `celery worker` (prefork) with Redis as broker and as the shared rate limiter,
triggers one relay batch, and waits until every row is final.

``--shape uniform`` (the default): N products, one price row per SKU (N requests, one bucket),
2 worker processes. It reports the delivery rate (2xx price updates per second between the
first and the last request), that rate as a share of SKYSYNC_RATE_LIMIT, the share of requests
answered 429, and the wall time. Goal (issue #4): >= 90 % of the configured limit with < 1 % of
429s.

With ``--rows`` over ``--batch-size`` (``make bench`` runs 600 rows in batches of 100), one
trigger claims the first batch and the worker catches up with the rest (docs/relay.md,
"Catching up"): the same rate and goal, across batch boundaries.

``--shape mixed`` (issue 10): N product stock rows, N variation stock rows, N invoices and N
shipments (N = 90), on existing products, variations and orders: four buckets, 4 worker
processes. It reports accepted writes/s per bucket and in total, the total as a share of the sum
of SkyHub's limits of the buckets used (4 x 9/s), the 429s and the wall time. Goal: >= 0.9 of
that sum with no 429 (our pace, 8.5/s a bucket, allows at most 0.944). Set BENCH_DUMP=path to
write the emulator's request log there.

``--shape fashion`` (issue 19, part 4): a fashion catalogue, N parents (N = 90) each with one
variation, all already on SkyHub; in the outbox a stock row for each parent and a stock row for
its variation, family by family. Two buckets (``PUT /products/{sku}``, ``PUT /variations/{sku}``),
4 worker processes, measured and judged as ``mixed`` is: the share of 2 x 9/s, goal >= 0.9 with
no 429. With ``--made-outside`` the catalogue was made outside skysync (seeded into the
emulator): skysync meets every SKU for the first time, and tries each variation as a product
first (a 404 on ``PUT /products/{sku}``, in that bucket, then ``PUT /variations/{sku}``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import create_pg_database, drop_pg_database  # noqa: E402

from skysync.emulator import Sandbox, SandboxConfig  # noqa: E402
from skysync.emulator.limits import peak_per_second  # noqa: E402
from skysync.skyhub.buckets import bucket_for  # noqa: E402
from skysync.skyhub.client import SkyHubClient  # noqa: E402
from skysync.store.db import dispose_engines, get_engine, migrate  # noqa: E402

CREDS = {"email": "bench@skysync.local", "api_key": "bench-key", "account_key": "bench-acct"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("uniform", "mixed", "fashion"), default="uniform")
    parser.add_argument(
        "--rows", type=int, default=None, help="uniform: 300; mixed: 90/bucket; fashion: 90 parents"
    )
    parser.add_argument("--rate-limit", type=float, default=8.5, help="SKYSYNC_RATE_LIMIT")
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--skyhub-limit", type=float, default=9.0, help="emulator's 9/s buckets")
    parser.add_argument(
        "--worker-processes", type=int, default=None, help="uniform 2, mixed and fashion 4"
    )
    parser.add_argument(
        "--batch-size", type=int, default=500, help="SKYSYNC_BATCH_SIZE (uniform: rows over it "
        "are claimed by catch-up batches as the worker sends the first)",
    )  # fmt: skip
    parser.add_argument(
        "--made-outside", action="store_true", help="fashion: the catalogue made outside skysync"
    )
    parser.add_argument("--redis-db", type=int, default=13)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    mixed = args.shape in ("mixed", "fashion")  # several buckets, measured the same way
    args.rows = args.rows or (90 if mixed else 300)
    args.worker_processes = args.worker_processes or (4 if mixed else 2)

    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    redis.Redis.from_url(redis_url).flushdb()
    db_url = create_pg_database("skysync_bench")
    migrate(db_url)
    sandbox = Sandbox(SandboxConfig(rate_limit=args.skyhub_limit, latency_ms=0, **CREDS))
    base_url = sandbox.start()
    env = {
        **os.environ,
        "SKYSYNC_DATABASE_URL": db_url,
        "SKYSYNC_BROKER_URL": redis_url,
        "SKYSYNC_REDIS_URL": redis_url,
        "SKYSYNC_SKYHUB_URL": base_url,
        "SKYSYNC_SKYHUB_EMAIL": CREDS["email"],
        "SKYSYNC_SKYHUB_API_KEY": CREDS["api_key"],
        "SKYSYNC_SKYHUB_ACCOUNT_KEY": CREDS["account_key"],
        "SKYSYNC_RATE_LIMIT": str(args.rate_limit),
        "SKYSYNC_BATCH_SIZE": str(args.batch_size),
        "SKYSYNC_LOG_LEVEL": "WARNING",
    }
    bin_dir = Path(sys.executable).parent
    worker = None
    try:
        sandbox.configure(rate_limits_enabled=False)
        setup_rows = 0  # rows drained to set the store up, final before the measured batch
        if args.shape == "fashion":
            setup_rows = _seed_fashion(sandbox, db_url, env, bin_dir, args.rows, args.made_outside)
        elif mixed:
            setup_rows = _seed_mixed(sandbox, db_url, env, bin_dir, args.rows)
        else:
            _seed_uniform(base_url, db_url, args.rows)
        sandbox.configure(rate_limits_enabled=True, latency_ms=args.latency_ms)
        seeded = len(sandbox.request_log())

        worker = subprocess.Popen(
            [
                str(bin_dir / "celery"), "-A", "skysync.celery_app", "worker",
                f"--concurrency={args.worker_processes}", "--loglevel=WARNING",
                "--without-gossip", "--without-mingle", "--hostname=bench@%h",
            ],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        _wait_for_worker(env, bin_dir)
        started = time.monotonic()
        subprocess.run([str(bin_dir / "skysync"), "trigger"], env=env, check=True,
                       capture_output=True)  # fmt: skip
        expected = args.rows * {"uniform": 1, "mixed": 4, "fashion": 2}[args.shape]
        counts = _wait_until_final(db_url, timeout=expected / 4 + 120)
        wall = time.monotonic() - started

        log = sandbox.request_log()[seeded:]
        if os.environ.get("BENCH_DUMP"):
            Path(os.environ["BENCH_DUMP"]).write_text(json.dumps(log))
        if mixed:
            result = _mixed_result(args, log, counts, wall, expected + setup_rows)
        else:
            result = _uniform_result(args, log, counts, wall)
            result["relay_batches"] = _relay_batches(db_url)
        if args.json:
            print(json.dumps(result))
        else:
            for key, value in result.items():
                print(f"{key:>32}: {value}")
        return 0 if result["goal_met"] else 1
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
        sandbox.stop()
        dispose_engines()
        drop_pg_database(db_url)
        redis.Redis.from_url(redis_url).flushdb()


def _insert(db_url: str, rows: list[tuple[str, str, dict[str, Any]]]) -> None:
    with get_engine(db_url).begin() as conn:
        conn.execute(
            sa.text("INSERT INTO skysync_outbox (kind, ref, payload) VALUES (:k, :r, :p)"),
            [{"k": kind, "r": ref, "p": json.dumps(payload)} for kind, ref, payload in rows],
        )


def _seed_uniform(base_url: str, db_url: str, n: int) -> None:
    """N products in the emulator, then one price row per SKU in the outbox."""
    with SkyHubClient(base_url, **CREDS) as client:
        for i in range(n):
            client.create_product({"sku": f"B-{i:05d}", "name": f"bench {i}", "price": 10.0})
    _insert(db_url, [("price", f"B-{i:05d}", {"price": 20.0 + i / 100}) for i in range(n)])


def _seed_mixed(sandbox: Sandbox, db_url: str, env: dict[str, str], bin_dir: Path, n: int) -> int:
    """What a store already has, created the way skysync creates it (product rows drained
    with ``skysync drain``, the emulator's limits off): N simple products and N variations
    (two under each of N/2 parents); 2N orders queued by the marketplace (half paid, half
    invoiced). Then, in the outbox, the ERP's mixed batch: a stock row for each product, a
    stock row for each variation, an invoice for each paid order and a shipment for each
    invoiced one, written kind after kind, the way a batch of the ERP's work piles up.
    Returns how many product rows the set-up drained."""
    parents = (n + 1) // 2
    variations = [f"V-{j:05d}-{k}" for j in range(parents) for k in range(2)][:n]
    _insert(
        db_url,
        [("product", f"P-{i:05d}", {"name": f"product {i}", "price": 10.0}) for i in range(n)]
        + [
            (
                "product",
                f"F-{j:05d}",
                {
                    "name": f"parent {j}",
                    "price": 10.0,
                    "variations": [{"sku": v, "qty": 1} for v in variations[2 * j : 2 * j + 2]],
                },
            )
            for j in range(parents)
        ],
    )
    setup_env = {k: v for k, v in env.items() if k != "SKYSYNC_REDIS_URL"}
    setup_env["SKYSYNC_RATE_LIMIT"] = "1000"
    subprocess.run([str(bin_dir / "skysync"), "drain"], env=setup_env, check=True,
                   capture_output=True)  # fmt: skip
    for i in range(n):
        sandbox.seed_order({"code": f"PAID-{i:05d}", "status": "payment_received"})
        sandbox.seed_order({"code": f"INV-{i:05d}", "status": "order_invoiced"})
    shipment = {
        "code": "SHIP-1",
        "items": [{"sku": "P-00000", "qty": 1}],
        "track": {"code": "BR123456789BR", "carrier": "Correios", "method": "PAC"},
    }
    _insert(
        db_url,
        [("stock", f"P-{i:05d}", {"qty": 5 + i % 7}) for i in range(n)]
        + [("stock", v, {"qty": 3 + i % 5}) for i, v in enumerate(variations)]
        + [("order_invoice", f"PAID-{i:05d}", {"key": f"{i:044d}"}) for i in range(n)]
        + [("order_shipment", f"INV-{i:05d}", {**shipment, "code": f"S-{i}"}) for i in range(n)],
    )
    return n + parents


def _seed_fashion(
    sandbox: Sandbox, db_url: str, env: dict[str, str], bin_dir: Path, n: int, outside: bool
) -> int:
    """A fashion catalogue already on SkyHub, created the way skysync creates it (product rows
    drained with ``skysync drain``, the emulator's limits off): N parents with one variation
    each. Then, in the outbox, a stock row for each parent and one for its variation, family by
    family: stock that lives on both. Returns how many product rows the set-up drained.

    ``outside``: the catalogue was made outside skysync (seeded into the emulator, no request),
    so skysync knows neither the parents nor which SKUs are variations."""
    products = [
        {
            "sku": f"FP-{j:05d}",
            "name": f"parent {j}",
            "price": 10.0,
            "variations": [{"sku": f"FV-{j:05d}", "qty": 1}],
        }
        for j in range(n)
    ]
    if outside:
        for product in products:
            sandbox.seed_product(product)
    else:
        _insert(db_url, [("product", p["sku"], {k: v for k, v in p.items() if k != "sku"})
                         for p in products])  # fmt: skip
        setup_env = {k: v for k, v in env.items() if k != "SKYSYNC_REDIS_URL"}
        setup_env["SKYSYNC_RATE_LIMIT"] = "1000"
        subprocess.run([str(bin_dir / "skysync"), "drain"], env=setup_env, check=True,
                       capture_output=True)  # fmt: skip
    _insert(
        db_url,
        [
            row
            for j in range(n)
            for row in (
                ("stock", f"FP-{j:05d}", {"qty": 5 + j % 7}),
                ("stock", f"FV-{j:05d}", {"qty": 3 + j % 5}),
            )
        ],
    )
    return 0 if outside else n


def _uniform_result(
    args: argparse.Namespace, log: list[dict[str, Any]], counts: dict[str, int], wall: float
) -> dict[str, Any]:
    puts = [e for e in log if e["method"] == "PUT"]
    ok = [e for e in puts if e["status"] and 200 <= e["status"] < 300]
    limited = [e for e in log if e["status"] == 429]
    span = ok[-1]["t"] - puts[0]["t"] if len(ok) > 1 else float("nan")
    rate = (len(ok) - 1) / span if span else float("nan")
    result = {
        "shape": "uniform",
        "rows": args.rows,
        "configured_rate_limit": args.rate_limit,
        "skyhub_limit": args.skyhub_limit,
        "latency_ms": args.latency_ms,
        "worker_processes": args.worker_processes,
        "requests": len(log),
        "sent_2xx": len(ok),
        "answered_429": len(limited),
        "share_429_pct": round(100 * len(limited) / max(1, len(log)), 2),
        "drain_rate_per_s": round(rate, 2),
        "share_of_configured_limit_pct": round(100 * rate / args.rate_limit, 1),
        "max_2xx_in_any_1s_window": peak_per_second([e["t"] for e in ok]),
        "wall_s_trigger_to_all_final": round(wall, 1),
        "outbox": counts,
    }
    result["goal_met"] = (
        result["share_of_configured_limit_pct"] >= 90
        and result["share_429_pct"] < 1
        and counts.get("sent") == args.rows
    )
    return result


def _mixed_result(
    args: argparse.Namespace,
    log: list[dict[str, Any]],
    counts: dict[str, int],
    wall: float,
    expected: int,
) -> dict[str, Any]:
    """Accepted writes per bucket: each bucket's rate is (n - 1) / (its last 2xx - its first
    request); the total is the sum of those intervals over the span from the first request of
    any bucket to the last 2xx of any, so a bucket that starts late or idles counts against it."""
    writes = [e for e in log if e["method"] != "GET"]
    by_bucket: dict[str, list[dict[str, Any]]] = {}
    for entry in writes:
        by_bucket.setdefault(bucket_for(entry["method"], entry["path"]), []).append(entry)
    per_bucket: dict[str, dict[str, Any]] = {}
    intervals = 0
    first = min(e["t"] for e in writes)
    last_ok = first
    for bucket, entries in sorted(by_bucket.items()):
        ok = [e for e in entries if e["status"] and 200 <= e["status"] < 300]
        span = ok[-1]["t"] - entries[0]["t"] if len(ok) > 1 else float("nan")
        intervals += max(0, len(ok) - 1)
        last_ok = max([last_ok] + [e["t"] for e in ok])
        per_bucket[bucket] = {
            "accepted": len(ok),
            "per_s": round((len(ok) - 1) / span, 2) if span else None,
            "from_s": round(entries[0]["t"] - first, 2),
            "to_s": round(ok[-1]["t"] - first, 2) if ok else None,
            "max_in_any_1s": peak_per_second([e["t"] for e in ok]),
        }
    span = last_ok - first
    total = intervals / span if span > 0 else float("nan")
    limits = args.skyhub_limit * len(per_bucket)
    limited = [e for e in log if e["status"] == 429]
    result = {
        "shape": args.shape,
        "rows_per_bucket": args.rows,
        "configured_rate_limit": args.rate_limit,
        "skyhub_limit": args.skyhub_limit,
        "latency_ms": args.latency_ms,
        "worker_processes": args.worker_processes,
        "requests": len(log),
        "answered_429": len(limited),
        "buckets": per_bucket,
        "accepted_writes_per_s": round(total, 2),
        "sum_of_bucket_limits": limits,
        "share_of_limits": round(total / limits, 3),
        "share_of_configured_rate": round(total / (args.rate_limit * len(per_bucket)), 3),
        "span_s_first_request_to_last_2xx": round(span, 1),
        "wall_s_trigger_to_all_final": round(wall, 1),
        "outbox": counts,
    }
    # the same, with the span started at the first request of any kind: the catalogue read a
    # batch makes before its writes when it meets SKUs it has never seen (relay/catalogue.py)
    started = min(e["t"] for e in log)
    reads_before = [e for e in log if e["method"] == "GET" and e["t"] <= first]
    span_all = last_ok - started
    result["reads_before_the_first_write"] = len(reads_before)
    result["span_s_counting_those_reads"] = round(span_all, 1)
    result["share_of_limits_counting_those_reads"] = round(
        intervals / span_all / limits if span_all > 0 else float("nan"), 3
    )
    if args.shape == "fashion":
        result["catalogue_made_outside_skysync"] = args.made_outside
    result["goal_met"] = (
        min(result["share_of_limits"], result["share_of_limits_counting_those_reads"]) >= 0.9
        and not limited
        and counts.get("sent") == expected
    )
    return result


def _relay_batches(db_url: str) -> int:
    """Relay batches run: more than one when the rows exceed SKYSYNC_BATCH_SIZE (catching up)."""
    with get_engine(db_url).connect() as conn:
        query = "SELECT count(*) FROM skysync_run WHERE kind = 'relay'"
        return int(conn.execute(sa.text(query)).scalar_one())


def _wait_for_worker(env: dict[str, str], bin_dir: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        probe = subprocess.run(
            [str(bin_dir / "celery"), "-A", "skysync.celery_app", "inspect", "ping", "-t", "1"],
            env=env, cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        if probe.returncode == 0 and "pong" in probe.stdout:
            return
        time.sleep(0.5)
    raise SystemExit("celery worker did not come up")


def _wait_until_final(db_url: str, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    query = sa.text("SELECT state, count(*) FROM skysync_outbox GROUP BY state")
    while True:
        with get_engine(db_url).connect() as conn:
            counts = {state: n for state, n in conn.execute(query)}
        if not counts.get("pending") and not counts.get("in_flight"):
            return counts
        if time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


if __name__ == "__main__":
    raise SystemExit(main())
