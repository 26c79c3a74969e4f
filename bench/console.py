"""Benchmark: the operator console's pages on a 1,000,000-row outbox (issue 23).

    make bench          # or: .venv/bin/python -m bench.console [--rows 1000000] [--json]

Set-up (timed, not part of the goal): a fresh PostgreSQL database at the migrations' head, filled
server-side with a month of skysync (bench/console_data.py: 1,000,000 outbox rows in realistic
states and kinds over two accounts, items, orders, the run log, SkyHub's errors), then
``VACUUM ANALYZE``. The console is served by uvicorn in this process, as `skysync console` serves
it, and each page is asked for over HTTP with an operator's credentials: once to warm up, then
``--repeat`` times; the table gives the median and the slowest of them (the whole answer, from
the request to its last byte). The confirmation of "requeue every dead row of the account" is
timed too: it counts what it would touch.

Goal (issue 23): every page's median well under 1 s. Exit 1 when one takes 1 s or more.
``--screenshot PATH`` also saves the overview, as Chromium shows it, as a PNG (how the README's
docs/console-overview.png is made; needs Debian's chromium and chromium-driver).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import create_pg_database, drop_pg_database  # noqa: E402
from console_helpers import served  # noqa: E402

import skysync.config  # noqa: E402
from bench.console_data import fill  # noqa: E402
from skysync.console.app import create_app  # noqa: E402
from skysync.store.db import dispose_engines, get_engine, migrate  # noqa: E402
from skysync.store.models import utcnow  # noqa: E402

OPERATOR = ("bench", "bench-console-pw")
GOAL = 1.0  # seconds, each page's median


def pages(db_url: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """(name, path, form) of what is timed; a form makes it a POST (the confirmation)."""
    with get_engine(db_url).connect() as conn:
        middle = conn.exec_driver_sql("SELECT max(id) / 2 FROM skysync_outbox").scalar_one()
    since = (utcnow() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    return [
        ("overview", "/", None),
        ("overview, account loja-sul", "/?account=loja-sul", None),
        ("rows in trouble, newest", "/trouble", None),
        ("rows in trouble, mid-table", f"/trouble?before={middle}", None),
        ("rows in trouble, dead cancels", "/trouble?state=dead&kind=order_cancel", None),
        ("rows in trouble, one SKU", "/trouble?ref=SKU-01234", None),
        ("rows in trouble, rejected in 24 h", f"/trouble?state=rejected&since={since}", None),
        ("SKU doctor", "/sku?sku=SKU-01234", None),
        ("orders", "/orders", None),
        ("one order", "/orders/ORD-00042", None),
        ("reconciliation", "/reconcile", None),
        ("confirm: requeue every dead row", "/trouble/requeue", {"state": "dead"}),
    ]  # fmt: skip


def time_pages(base: str, db_url: str, repeat: int) -> list[dict[str, Any]]:
    results = []
    with httpx.Client(base_url=base, auth=OPERATOR, timeout=120) as client:
        token = _csrf(client.get("/trouble").text)
        for name, path, form in pages(db_url):
            seconds = []
            size = 0
            for attempt in range(repeat + 1):
                started = time.perf_counter()
                if form is None:
                    answer = client.get(path)
                else:
                    answer = client.post(path, data={"csrf": token, **form})
                elapsed = time.perf_counter() - started
                if answer.status_code != 200:
                    raise SystemExit(f"{name}: {path} answered {answer.status_code}")
                size = len(answer.content)
                if attempt:  # the first one warms up (connections, templates, caches)
                    seconds.append(elapsed)
            results.append(
                {
                    "page": name,
                    "path": path,
                    "median_s": round(statistics.median(seconds), 4),
                    "max_s": round(max(seconds), 4),
                    "kib": round(size / 1024, 1),
                }
            )
    return results


def _csrf(page: str) -> str:
    marker = 'name="csrf" value="'
    start = page.index(marker) + len(marker)
    return page[start : page.index('"', start)]


def screenshot(base: str, path: Path) -> None:
    """The overview as Chromium shows it, 1280 px wide, the whole page."""
    import base64

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,900")
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        host = base.split("://", 1)[1]
        driver.get(f"http://{OPERATOR[0]}:{OPERATOR[1]}@{host}/")
        size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": 1280, "height": size["height"], "scale": 1},
            },
        )
        path.write_bytes(base64.b64decode(shot["data"]))
    finally:
        driver.quit()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="outbox rows to write")
    parser.add_argument("--repeat", type=int, default=7, help="timed requests per page")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--screenshot", type=Path, help="save the overview as a PNG here")
    args = parser.parse_args()
    say = (lambda *_a: None) if args.json else print

    db_url = create_pg_database("skysync_bench_console")
    try:
        migrate(db_url)
        say(f"writing {args.rows:,} outbox rows and a month of runs, orders and errors ...")
        started = time.perf_counter()
        took = fill(db_url, args.rows)
        fill_s = time.perf_counter() - started
        say(f"  {fill_s:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in took.items())})")
        accounts = Path(tempfile.mkdtemp(prefix="bench-console-")) / "accounts.toml"
        accounts.write_text('[accounts.loja-sul]\nemail = "sul@example.com"\napi_key = "k"\n')
        settings = skysync.config.load_settings(
            database_url=db_url,
            skyhub_url="http://127.0.0.1:9",  # no page timed here calls SkyHub
            accounts_file=accounts,
            console_operators=f"{OPERATOR[0]}:{OPERATOR[1]}",
        )
        with served(create_app(settings)) as base:
            results = time_pages(base, db_url, args.repeat)
            if args.screenshot is not None:
                screenshot(base, args.screenshot)
                say(f"overview saved as {args.screenshot}")
    finally:
        dispose_engines()
        drop_pg_database(db_url)

    worst = max(r["median_s"] for r in results)
    report = {
        "rows": args.rows,
        "fill_s": round(fill_s, 1),
        "repeat": args.repeat,
        "pages": results,
        "goal_s": GOAL,
        "worst_median_s": worst,
        "met": worst < GOAL,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        width = max(len(r["page"]) for r in results)
        print(f"\n{'page':<{width}}  {'median':>8}  {'slowest':>8}  {'size':>8}")
        for r in results:
            print(
                f"{r['page']:<{width}}  {r['median_s'] * 1000:>6.0f} ms  "
                f"{r['max_s'] * 1000:>6.0f} ms  {r['kib']:>5.1f} KiB"
            )
        verdict = "met" if report["met"] else "MISSED"
        print(f"\n{args.rows:,} outbox rows; every median under {GOAL:.0f} s: {verdict}")
    return 0 if report["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
