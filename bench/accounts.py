"""Benchmark: several SkyHub accounts through real Celery workers (issue #21).

    make bench        # or: .venv/bin/python -m bench.accounts [--accounts 20] [--json]

20 accounts (``acct-01`` ... ``acct-20``, each its own credentials in an accounts file), against
the emulator in this process with SkyHub's limits (9 requests/s per bucket, per account) and
200 ms of latency per request, through two separate ``celery worker`` processes (as two machines
would run them) on Redis, broker and shared rate limiter, and PostgreSQL.

Each account has the same 90 products on SkyHub (``S-000`` ... ``S-089``: the same SKU names in
every account) and gets 90 stock rows, with values of its own (account k: qty k*1000 + i).

Phase 1: every account's 90 rows, one trigger. Reported: accepted writes/s per account and in
total, the total as a share of the sum of the accounts' limits (20 x 9/s = 180/s; goal >= 0.85),
the 429s (goal 0), every account's catalogue holding exactly its own values, and the most
requests any account got in one second (<= 9: the two workers together stay under each
account's limit).

Phase 2, the same stack: account 3's key is revoked on SkyHub, account 7 gets a backlog of
200,000 stock rows (20 per SKU over 10,000 SKUs of its own catalogue), then every account gets
90 fresh rows again and one trigger. Reported: the other 18 accounts' writes/s, each as a share
of its limit (goal: each >= 0.85), account 3's rows waiting with the reason, account 7 sending
its backlog at its own pace meanwhile.

CPU: the workers' CPU time (every process of both, read from /proc) per delivered write, in
ms, over each phase, and what one worker process can sustain (1000 / that, writes/s per core).
docs/benchmarks.md turns it into worker machines for N accounts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import create_pg_database, drop_pg_database  # noqa: E402

from bench.relay_throughput import _wait_for_worker  # noqa: E402
from skysync.emulator import Sandbox, SandboxConfig  # noqa: E402
from skysync.emulator.limits import peak_per_second  # noqa: E402
from skysync.store.db import dispose_engines, get_engine, migrate  # noqa: E402

SKUS = [f"S-{i:03d}" for i in range(90)]
REVOKED, BACKLOGGED = 3, 7
BACKLOG_SKUS = 10_000
ACCOUNT_KEY = "bench-account-manager"


def name_of(k: int) -> str:
    return f"acct-{k:02d}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--backlog", type=int, default=200_000, help="account 7's backlog rows")
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--rate-limit", type=float, default=8.5, help="SKYSYNC_RATE_LIMIT")
    parser.add_argument("--pool", choices=("threads", "prefork"), default="threads")
    parser.add_argument("--concurrency", type=int, default=32, help="slots per worker")
    parser.add_argument("--redis-db", type=int, default=12)
    parser.add_argument("--phases", type=int, choices=(1, 2), default=2, help="1: phase 1 only")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    names = [name_of(k) for k in range(1, args.accounts + 1)]

    redis_url = f"redis://127.0.0.1:6379/{args.redis_db}"
    redis.Redis.from_url(redis_url).flushdb()
    db_url = create_pg_database("skysync_bench_acc")
    migrate(db_url)
    sandbox = Sandbox(SandboxConfig(rate_limit=9.0, latency_ms=0, account_key=None))
    base_url = sandbox.start()
    workdir = Path(tempfile.mkdtemp(prefix="skysync-bench-accounts-"))
    accounts_file = workdir / "accounts.toml"
    accounts_file.write_text(
        "".join(
            f'[accounts.{n}]\nemail = "{n}@bench.local"\napi_key = "key-{n}"\n\n' for n in names
        )
    )
    env = {
        **os.environ,
        "SKYSYNC_DATABASE_URL": db_url,
        "SKYSYNC_BROKER_URL": redis_url,
        "SKYSYNC_REDIS_URL": redis_url,
        "SKYSYNC_SKYHUB_URL": base_url,
        "SKYSYNC_SKYHUB_ACCOUNT_KEY": ACCOUNT_KEY,
        "SKYSYNC_ACCOUNTS_FILE": str(accounts_file),
        "SKYSYNC_RATE_LIMIT": str(args.rate_limit),
        "SKYSYNC_LOG_LEVEL": "WARNING",
    }
    for key in ("SKYSYNC_SKYHUB_EMAIL", "SKYSYNC_SKYHUB_API_KEY"):
        env.pop(key, None)
    bin_dir = Path(sys.executable).parent
    workers: list[subprocess.Popen[str]] = []
    try:
        for name in names:
            sandbox.add_account(name, f"{name}@bench.local", f"key-{name}")
            sandbox.seed_products(
                [{"sku": s, "name": f"{name} {s}", "price": 10.0, "qty": 0} for s in SKUS],
                account=name,
            )
        sandbox.configure(latency_ms=args.latency_ms)
        for i in (1, 2):
            command = [
                str(bin_dir / "celery"), "-A", "skysync.celery_app", "worker",
                f"--pool={args.pool}", f"--concurrency={args.concurrency}", "--loglevel=WARNING",
                "--without-gossip", "--without-mingle", f"--hostname=bench{i}@%h",
            ]  # fmt: skip
            workers.append(
                subprocess.Popen(
                    command,
                    env=env,
                    cwd=ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
            )
        _wait_for_worker(env, bin_dir)
        time.sleep(2)  # both workers' pools up
        result: dict[str, Any] = {
            "accounts": len(names),
            "latency_ms": args.latency_ms,
            "configured_rate_limit": args.rate_limit,
            "workers": f"2 processes, {args.pool} pool, {args.concurrency} slots each",
        }
        # phase 0, not measured: each account's products become known to skysync, as after
        # it created them (else phase 1 would also time each account's first read of its
        # catalogue: relay/catalogue.py)
        _phase(sandbox, db_url, env, bin_dir, workers, names, 0)
        result["phase_1"] = _phase(sandbox, db_url, env, bin_dir, workers, names, 1)
        if args.accounts >= BACKLOGGED and args.phases == 2:
            sandbox.revoke_account(name_of(REVOKED))
            result["backlog_set_up"] = _start_backlog(
                sandbox, db_url, env, bin_dir, name_of(BACKLOGGED), args.backlog
            )
            result["phase_2"] = _phase(sandbox, db_url, env, bin_dir, workers, names, 2)
        result["goal_met"] = _goal_met(result)
        if args.json:
            print(json.dumps(result))
        else:
            print(json.dumps(result, indent=2))
        return 0 if result["goal_met"] else 1
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        sandbox.stop()
        dispose_engines()
        drop_pg_database(db_url)
        redis.Redis.from_url(redis_url).flushdb()


def _qty(k: int, i: int, phase: int) -> int:
    return k * 1000 + i + {0: 200, 1: 0, 2: 500}[phase]


def _phase(
    sandbox: Sandbox,
    db_url: str,
    env: dict[str, str],
    bin_dir: Path,
    workers: list[subprocess.Popen[str]],
    names: list[str],
    phase: int,
) -> dict[str, Any]:
    """Every account's 90 rows, one trigger, until each account's rows are final (account 3
    in phase 2: waiting on its refused key; account 7's backlog: not waited for)."""
    seen = {n: len(sandbox.request_log(account=n)) for n in names}
    _insert(
        db_url,
        [
            (name, "stock", sku, {"qty": _qty(k, i, phase)})
            for k, name in enumerate(names, 1)
            for i, sku in enumerate(SKUS)
        ],
    )
    cpu_before = _cpu_seconds(workers)
    started = time.monotonic()
    subprocess.run([str(bin_dir / "skysync"), "trigger"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    measured = [n for k, n in enumerate(names, 1) if phase == 1 or k not in (REVOKED, BACKLOGGED)]
    waited = _wait_until_sent(db_url, measured, len(SKUS), timeout=300)
    wall = time.monotonic() - started
    cpu = _cpu_seconds(workers) - cpu_before
    logs = {n: sandbox.request_log(account=n)[seen[n] :] for n in names}
    if os.environ.get("BENCH_DUMP"):  # every account's request log, for a closer look
        Path(f"{os.environ['BENCH_DUMP']}.phase{phase}.json").write_text(json.dumps(logs))
    per_account = {n: _account_rates(logs[n]) for n in names}
    writes = sum(a["accepted"] for a in per_account.values())
    firsts = [a["first_t"] for a in per_account.values() if a["first_t"] is not None]
    lasts = [a["last_ok_t"] for a in per_account.values() if a["last_ok_t"] is not None]
    span = max(lasts) - min(firsts) if firsts and lasts else float("nan")
    for a in per_account.values():  # when each account's writes began and ended, in the span
        for key, at in (("from_s", a["first_t"]), ("to_s", a["last_ok_t"])):
            a[key] = round(at - min(firsts), 2) if at is not None and firsts else None
    intervals = sum(max(0, per_account[n]["accepted"] - 1) for n in measured)
    own = {n: _own_values(sandbox, n, k, phase) for k, n in enumerate(names, 1) if n in measured}
    out: dict[str, Any] = {
        "rows_per_account": len(SKUS),
        "measured_accounts": len(measured),
        "all_measured_rows_sent": waited,
        "wall_s_trigger_to_measured_rows_sent": round(wall, 1),
        "accepted_writes": writes,
        "total_writes_per_s": round(intervals / span, 1) if span > 0 else None,
        "sum_of_limits": 9.0 * len(measured),
        "share_of_sum_of_limits": round(intervals / span / (9.0 * len(measured)), 3),
        "answered_429": sum(a["answered_429"] for a in per_account.values()),
        "max_requests_of_one_account_in_any_1s": max(
            a["max_in_any_1s"] for a in per_account.values()
        ),
        "max_accepted_of_one_account_in_any_1s": max(
            a["max_accepted_in_any_1s"] for a in per_account.values()
        ),
        "min_share_of_own_limit": min(per_account[n]["share_of_limit"] or 0 for n in measured),
        "accounts_with_exactly_their_values": sum(own.values()),
        "cpu_s_workers": round(cpu, 1),
        "cpu_ms_per_delivered_write": round(1000 * cpu / max(1, writes), 2),
        "writes_per_s_one_worker_process_can_sustain": round(writes / cpu, 0) if cpu else None,
        "per_account": {
            n: {k: v for k, v in a.items() if k not in ("first_t", "last_ok_t")}
            for n, a in per_account.items()
        },
    }
    if phase == 2:
        out["revoked_account"] = _waiting(db_url, name_of(REVOKED))
        out["backlogged_account"] = _waiting(db_url, name_of(BACKLOGGED))
    return out


def _account_rates(log: list[dict[str, Any]]) -> dict[str, Any]:
    """An account's accepted writes and their pace: (n - 1) / (last 2xx - first request)."""
    writes = [e for e in log if e["method"] != "GET"]
    ok = [e for e in writes if e["status"] and 200 <= e["status"] < 300]
    span = ok[-1]["t"] - writes[0]["t"] if len(ok) > 1 else 0.0
    rate = (len(ok) - 1) / span if span > 0 else None
    return {
        "accepted": len(ok),
        "per_s": round(rate, 2) if rate else None,
        "share_of_limit": round(rate / 9.0, 3) if rate else None,
        "answered_401": sum(e["status"] == 401 for e in log),
        "answered_429": sum(e["status"] == 429 for e in log),
        "max_in_any_1s": peak_per_second([e["t"] for e in log]) if log else 0,
        "max_accepted_in_any_1s": peak_per_second([e["t"] for e in ok]) if ok else 0,
        "first_t": writes[0]["t"] if writes else None,
        "last_ok_t": ok[-1]["t"] if ok else None,
    }


def _own_values(sandbox: Sandbox, name: str, k: int, phase: int) -> bool:
    """The account's catalogue holds exactly its own latest values (no other account's)."""
    products = sandbox.state(account=name)["products"]
    return all(products[s]["qty"] == _qty(k, i, phase) for i, s in enumerate(SKUS))


def _insert(db_url: str, rows: list[tuple[str, str, str, dict[str, Any]]]) -> None:
    with get_engine(db_url).begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO skysync_outbox (account, kind, ref, payload) VALUES (:a, :k, :r, :p)"
            ),
            [{"a": a, "k": k, "r": r, "p": json.dumps(p)} for a, k, r, p in rows],
        )


def _start_backlog(
    sandbox: Sandbox, db_url: str, env: dict[str, str], bin_dir: Path, name: str, rows: int
) -> dict[str, Any]:
    """Account 7's backlog, written and flowing: one trigger, then wait until SkyHub has
    accepted its first writes (its batch reads its catalogue first: 10,000 SKUs skysync has
    never seen), so that phase 2's fresh rows meet a backlog in full flow."""
    _backlog(db_url, sandbox, name, rows)
    started = time.monotonic()
    subprocess.run([str(bin_dir / "skysync"), "trigger"], env=env, check=True,
                   capture_output=True)  # fmt: skip

    def accepted() -> int:
        log = sandbox.request_log(account=name)
        return sum(1 for e in log if e["method"] == "PUT" and e["path"].startswith("/products/BL-")
                   and e["status"] and e["status"] < 300)  # fmt: skip

    deadline = time.monotonic() + 120
    while accepted() < 20 and time.monotonic() < deadline:
        time.sleep(0.5)
    return {
        "account": name,
        "rows": rows,
        "skus": max(1, min(BACKLOG_SKUS, rows // 20)),
        "s_until_its_writes_flowed": round(time.monotonic() - started, 1),
        "writes_accepted_by_then": accepted(),
    }


def _backlog(db_url: str, sandbox: Sandbox, name: str, rows: int) -> None:
    """``rows`` stock rows for ``name``, 20 per SKU, over SKUs its catalogue has."""
    skus = max(1, min(BACKLOG_SKUS, rows // 20))
    sandbox.seed_products(
        [{"sku": f"BL-{j:05d}", "name": f"backlog {j}", "price": 10.0} for j in range(skus)],
        account=name,
    )
    with get_engine(db_url).begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO skysync_outbox (account, kind, ref, payload) "
                "SELECT :a, 'stock', 'BL-' || lpad((g % :n)::text, 5, '0'), "
                "jsonb_build_object('qty', g) FROM generate_series(1, :rows) AS g"
            ),
            {"a": name, "n": skus, "rows": rows},
        )


def _wait_until_sent(db_url: str, names: list[str], each: int, timeout: float) -> bool:
    """Until every account of ``names`` has ``each`` more rows sent than before... counted as
    rows of theirs neither pending nor in flight (the backlog's account is not among them)."""
    deadline = time.monotonic() + timeout
    query = sa.text(
        "SELECT count(*) FROM skysync_outbox WHERE account = ANY(:a) "
        "AND state IN ('pending', 'in_flight')"
    )
    while time.monotonic() < deadline:
        with get_engine(db_url).connect() as conn:
            if conn.execute(query, {"a": names}).scalar_one() == 0:
                return True
        time.sleep(0.2)
    return False


def _waiting(db_url: str, name: str) -> dict[str, Any]:
    with get_engine(db_url).connect() as conn:
        states = dict(
            conn.execute(
                sa.text(
                    "SELECT state, count(*) FROM skysync_outbox WHERE account = :a GROUP BY state"
                ),
                {"a": name},
            ).all()
        )
        reason = conn.execute(
            sa.text(
                "SELECT reason FROM skysync_outbox WHERE account = :a AND state = 'pending' "
                "AND reason IS NOT NULL ORDER BY id DESC LIMIT 1"
            ),
            {"a": name},
        ).scalar()
    return {"rows_by_state": states, "a_pending_row_says": reason}


def _cpu_seconds(workers: list[subprocess.Popen[str]]) -> float:
    """User + system CPU time of every process of the workers (each and its pool), from
    /proc: what the relay costs, apart from the emulator, PostgreSQL and Redis."""
    tick = os.sysconf("SC_CLK_TCK")
    parents = {w.pid for w in workers}
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(stat.parent.name), int(fields[1])
        if pid in parents or ppid in parents:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _goal_met(result: dict[str, Any]) -> bool:
    one = result["phase_1"]
    ok = (
        one["share_of_sum_of_limits"] >= 0.85
        and one["answered_429"] == 0
        and one["accounts_with_exactly_their_values"] == one["measured_accounts"]
        and one["max_requests_of_one_account_in_any_1s"] <= 9
    )
    two = result.get("phase_2")
    if two is not None:  # the second goal: each of the 18 at >= 0.85 of its limit
        ok = ok and (
            two["min_share_of_own_limit"] >= 0.85
            and two["accounts_with_exactly_their_values"] == two["measured_accounts"]
            and two["max_accepted_of_one_account_in_any_1s"] <= 9
        )
    return ok


if __name__ == "__main__":
    raise SystemExit(main())
