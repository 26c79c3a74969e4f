"""Benchmark: how fast a backlog drains through a real Celery worker, against the emulator with
SkyHub's limits (9 requests/s per bucket) and 200 ms of latency per request.

    make bench                      # or: .venv/bin/python -m bench.relay_throughput --rows 300

What it does: creates a fresh PostgreSQL database, starts the SkyHub emulator in this process,
creates N products in it (limits off for the set-up), writes N price rows (one per SKU, so N
requests) into the outbox, starts `celery worker` (prefork, 2 processes) with Redis as broker and
as the shared rate limiter, triggers one relay batch, and waits until every row is final.

It reports the delivery rate (2xx price updates per second between the first and the last
request), that rate as a share of SKYSYNC_RATE_LIMIT, the share of requests answered 429, and the
wall time. Goal (issue #4): >= 90 % of the configured limit with < 1 % of 429s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import create_pg_database, drop_pg_database  # noqa: E402

from skysync.emulator import Sandbox, SandboxConfig  # noqa: E402
from skysync.emulator.limits import peak_per_second  # noqa: E402
from skysync.skyhub.client import SkyHubClient  # noqa: E402
from skysync.store.db import dispose_engines, get_engine, migrate  # noqa: E402

CREDS = {"email": "bench@skysync.local", "api_key": "bench-key", "account_key": "bench-acct"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--rate-limit", type=float, default=8.5, help="SKYSYNC_RATE_LIMIT")
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--skyhub-limit", type=float, default=9.0, help="emulator's 9/s buckets")
    parser.add_argument("--worker-processes", type=int, default=2)
    parser.add_argument("--redis-db", type=int, default=13)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()

    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    redis.Redis.from_url(redis_url).flushdb()
    db_url = create_pg_database("skysync_bench")
    migrate(db_url)
    sandbox = Sandbox(SandboxConfig(rate_limit=args.skyhub_limit, latency_ms=0, **CREDS))
    base_url = sandbox.start()
    worker = None
    try:
        sandbox.configure(rate_limits_enabled=False)
        with SkyHubClient(base_url, **CREDS) as client:
            for i in range(args.rows):
                client.create_product({"sku": f"B-{i:05d}", "name": f"bench {i}", "price": 10.0})
        sandbox.configure(rate_limits_enabled=True, latency_ms=args.latency_ms)
        seeded = len(sandbox.request_log())

        with get_engine(db_url).begin() as conn:
            conn.execute(
                sa.text("INSERT INTO skysync_outbox (kind, ref, payload) VALUES ('price', :r, :p)"),
                [
                    {"r": f"B-{i:05d}", "p": json.dumps({"price": 20.0 + i / 100})}
                    for i in range(args.rows)
                ],
            )

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
            "SKYSYNC_LOG_LEVEL": "WARNING",
        }
        bin_dir = Path(sys.executable).parent
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
        counts = _wait_until_final(db_url, timeout=args.rows / 4 + 120)
        wall = time.monotonic() - started

        log = sandbox.request_log()[seeded:]
        puts = [e for e in log if e["method"] == "PUT"]
        ok = [e for e in puts if e["status"] and 200 <= e["status"] < 300]
        limited = [e for e in log if e["status"] == 429]
        span = ok[-1]["t"] - puts[0]["t"] if len(ok) > 1 else float("nan")
        rate = (len(ok) - 1) / span if span else float("nan")
        max_in_window = peak_per_second([e["t"] for e in ok])
        result = {
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
            "max_2xx_in_any_1s_window": max_in_window,
            "wall_s_trigger_to_all_final": round(wall, 1),
            "outbox": counts,
        }
        result["goal_met"] = (
            result["share_of_configured_limit_pct"] >= 90
            and result["share_429_pct"] < 1
            and counts.get("sent") == args.rows
        )
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
