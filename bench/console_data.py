"""A realistic month of skysync on PostgreSQL, written server-side with ``generate_series``: the
data ``bench/console.py`` times the console's pages on (and the README's screenshot shows).

``fill(db_url, rows)`` writes, into a migrated database:

* ``rows`` outbox rows (1,000,000 by default) written over the last 30 days, ids in the order of
  ``created_at``; 80 % of account ``default``, 20 % of ``loja-sul``; kinds 55 % stock, 30 % price,
  10 % product, 5 % order steps; over 20,000 SKUs and 5,000 orders. The newest 500 are pending
  or in flight (what the next batch takes); the others ended ``sent`` (83.5 %), ``superseded``
  (14.6 %) or in trouble: ``rejected`` 1 %, ``dead`` 0.3 %, ``withheld`` 0.6 %, ``held``
  0.05 %, each with a reason as the relay writes them (about 19,500 rows in trouble).
* the items of those SKUs (what SkyHub acknowledged), a few frozen;
* 5,000 orders per account with their inbox rows (300 not consumed yet) and lines;
* (the rows' times follow days and nights: most are written in the afternoon)
* the run log of a month: a relay batch every 15 minutes, an order pull every minute and a pull
  of SkyHub's errors every hour per account, a daily reconciliation (the last with drift,
  orphans and missing SKUs) and a few operators' actions in the console;
* 300 of SkyHub's own errors about products.

Every INSERT is one statement over ``generate_series``: 1,000,000 rows take about a minute here.
"""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa

from skysync.store.db import get_engine

DAYS = 30
SKUS = 20_000
ORDERS = 5_000
ACCOUNTS = ("default", "loja-sul")

# A row's bucket (0..999) from its id, scattered: (g * 7919) % 1000 decides the kind, another
# multiplier the state, so kinds and states mix over time as they do in a real outbox.
_OUTBOX = """
INSERT INTO skysync_outbox (id, created_at, account, kind, ref, payload, state, attempts,
    available_at, finished_at, reason, last_status, updated_at, origin, claim_epoch)
SELECT g, created, account, kind,
    CASE WHEN kind LIKE 'order_%' THEN 'ORD-' || lpad((g % :orders)::text, 5, '0')
         ELSE 'SKU-' || lpad(((g * 104729) % :skus)::text, 5, '0') END,
    CASE kind
        WHEN 'stock' THEN jsonb_build_object('qty', g % 50)
        WHEN 'price' THEN jsonb_build_object('price', 19.9 + g % 500,
                                              'promotional_price', 17.9 + g % 500)
        WHEN 'product' THEN jsonb_build_object('name', 'Produto ' || g, 'price', 19.9 + g % 500,
                                                'qty', g % 50, 'status', 'enabled')
        ELSE jsonb_build_object('key', lpad(g::text, 44, '0'))
    END,
    state,
    CASE state WHEN 'dead' THEN 8 WHEN 'sent' THEN 1 WHEN 'superseded' THEN 0 ELSE 1 END,
    created,
    CASE WHEN state IN ('pending', 'in_flight') THEN NULL
         ELSE created + ((g % 900) || ' seconds')::interval END,
    CASE state
        WHEN 'rejected' THEN CASE WHEN kind = 'price'
            THEN 'price: must be a number greater than 0 (got -1)'
            ELSE 'SkyHub refused it (422): {"message": "Categoria inválida para o marketplace"}'
            END
        WHEN 'dead' THEN 'SkyHub answered 503 eight times (SKYSYNC_MAX_ATTEMPTS): Service '
                         || 'Unavailable'
        WHEN 'withheld' THEN 'frozen by the marketplace: attributes withheld (name, description)'
        WHEN 'held' THEN 'price drop guard: 99.90 -> 9.99 is 90.0 % below the last price SkyHub '
                         || 'acknowledged (SKYSYNC_PRICE_DROP_GUARD=50)'
        WHEN 'superseded' THEN 'folded into row ' || (g + 1)
        ELSE NULL END,
    CASE state WHEN 'sent' THEN 204 WHEN 'dead' THEN 503 WHEN 'rejected' THEN 422 ELSE NULL END,
    created,
    'erp',
    CASE WHEN state = 'pending' THEN NULL ELSE g / 500 END
FROM (
    SELECT g,
        -- evenly by id, bent into days and nights: busy afternoons, quiet nights
        now() - interval '1 day' * :days
            + interval '1 second' * (x - 0.7 * 13750.99 * (cos(2 * pi() * x / 86400) - 1))
            AS created,
        CASE WHEN g % 10 < 8 THEN 'default' ELSE 'loja-sul' END AS account,
        CASE WHEN (g * 7919) % 1000 < 550 THEN 'stock'
             WHEN (g * 7919) % 1000 < 850 THEN 'price'
             WHEN (g * 7919) % 1000 < 950 THEN 'product'
             ELSE (ARRAY['order_invoice', 'order_shipment', 'order_delivery', 'order_cancel',
                         'order_shipment_exception'])[(1 + g % 5)::int] END AS kind,
        CASE WHEN g > :rows * 0.9995 THEN
                CASE WHEN g % 5 = 0 THEN 'in_flight' ELSE 'pending' END
             WHEN (g * 40503) % 10000 < 100 THEN 'rejected'
             WHEN (g * 40503) % 10000 < 130 THEN 'dead'
             WHEN (g * 40503) % 10000 < 190 THEN 'withheld'
             WHEN (g * 40503) % 10000 < 195 THEN 'held'
             WHEN (g * 40503) % 10000 < 1650 THEN 'superseded'
             ELSE 'sent' END AS state
    FROM generate_series(1, CAST(:rows AS bigint)) g,
        LATERAL (SELECT g::float8 / :rows * :days * 86400 AS x) AS t
) AS r
"""

_ITEMS = """
INSERT INTO skysync_item (account, sku, in_skyhub, acknowledged, linked, linked_since, frozen,
    frozen_since, last_applied, checked_at, updated_at)
SELECT a, 'SKU-' || lpad(s::text, 5, '0'), true,
    jsonb_build_object('qty', s % 50, 'price', 19.9 + s % 500, 'name', 'Produto ' || s,
                       'status', 'enabled'),
    s % 40 = 0, CASE WHEN s % 40 = 0 THEN now() - interval '20 days' END,
    s % 40 = 0, CASE WHEN s % 40 = 0 THEN now() - interval '20 days' END,
    '{}'::jsonb, now() - interval '1 hour', now() - interval '1 hour'
FROM generate_series(0, :skus - 1) s, unnest(CAST(:accounts AS text[])) a
"""

_ORDERS = """
INSERT INTO skysync_order (account, code, status, status_source, last_inbox_id, updated_at,
    placed_at, approved_at, expedition_limit_at)
SELECT a, 'ORD-' || lpad(o::text, 5, '0'),
    (ARRAY['payment_received', 'invoiced', 'shipped', 'delivered', 'canceled'])[1 + o % 5],
    CASE WHEN o % 3 = 0 THEN 'skysync' ELSE 'skyhub' END, NULL,
    now() - interval '1 minute' * (o * 8),
    now() - interval '1 minute' * (o * 8 + 60), now() - interval '1 minute' * (o * 8 + 30),
    now() - interval '1 minute' * (o * 8) + interval '2 days'
FROM generate_series(0, :orders - 1) o, unnest(CAST(:accounts AS text[])) a
"""

_INBOX = """
INSERT INTO skysync_order_inbox (account, code, status, dedupe_key, raw, received_at,
    consumed_at)
SELECT a, 'ORD-' || lpad(o::text, 5, '0'), s, a || '/ORD-' || o || '/' || s,
    jsonb_build_object('code', 'ORD-' || lpad(o::text, 5, '0'), 'status',
                       jsonb_build_object('code', s)),
    now() - interval '1 minute' * (o * 8 + 50),
    CASE WHEN o < 150 THEN NULL ELSE now() - interval '1 minute' * (o * 8 + 49) END
FROM generate_series(0, :orders - 1) o, unnest(CAST(:accounts AS text[])) a,
    unnest(ARRAY['payment_received']) s
"""

_LINES = """
INSERT INTO skysync_order_line (account, code, sku, qty)
SELECT a, 'ORD-' || lpad(o::text, 5, '0'), 'SKU-' || lpad(((o * 31) % :skus)::text, 5, '0'),
    1 + o % 3
FROM generate_series(0, :orders - 1) o, unnest(CAST(:accounts AS text[])) a
"""

# every 15 minutes a relay batch, every minute an order pull, per account, for :days days
_RUNS = """
INSERT INTO skysync_run (account, kind, started_at, finished_at, summary, error)
SELECT a, k, t, t + interval '2 seconds',
    CASE k WHEN 'relay' THEN jsonb_build_object(
                'claimed', 300 + (extract(epoch FROM t)::int % 200), 'keys', 120, 'superseded', 170,
                'rejected', 4, 'more_due', false,
                'delivery', jsonb_build_object('keys', 120, 'sent', 118, 'withheld', 1,
                                               'rejected', 1, 'auth_failed', false))
           WHEN 'pull_orders' THEN jsonb_build_object('received', extract(epoch FROM t)::int % 3,
                                                      'stored', extract(epoch FROM t)::int % 3)
           ELSE jsonb_build_object('listed', jsonb_build_object('products', 150, 'orders', 0),
                                   'new', extract(epoch FROM t)::int % 2, 'resolved', 0) END,
    NULL
FROM unnest(CAST(:accounts AS text[])) a,
    LATERAL (VALUES ('relay', interval '15 minutes'), ('pull_orders', interval '1 minute'),
                    ('pull_sync_errors', interval '1 hour')) v(k, step),
    LATERAL generate_series(now() - interval '1 day' * :days, now(), step) t
"""

_SYNC_ERRORS = """
INSERT INTO skysync_sync_error (account, entity_type, entity_id, error_category_code, error_code,
    message, last_occurrence, raw, first_seen_at, last_seen_at)
SELECT 'default', 'products', 'SKU-' || lpad(((e * 61) % :skus)::text, 5, '0'), 'marketplace',
    'E' || (100 + e % 7), 'Marketplace recusou: categoria sem mapeamento (' || e || ')',
    (now() - interval '1 hour' * e)::text, '{}'::jsonb,
    now() - interval '1 hour' * e, now() - interval '1 hour'
FROM generate_series(1, 300) e
"""


_CONSOLE_ACTIONS = (
    (2.5, "ana", "requeued 214 rows (account default, state dead, kind stock)"),
    (26, "rui", "released 1 row (account default, row 912004): it goes out with the next batch"),
    (50, "ana", "asked SkyHub to ignore 3 errors: 12, 14, 15"),
)


def _reconcile_summary(drift: int) -> dict[str, Any]:
    sample = [
        {
            "sku": f"SKU-{i * 97 % SKUS:05d}",
            "field": ("price", "qty", "promotional_price")[i % 3],
            "erp": 49.9 if i % 3 != 1 else 7,
            "skyhub": 54.9 if i % 3 != 1 else 2,
            "believed_since": "2026-12-01T10:00:00+00:00",
            "row_id": 1000 + i,
            "frozen": False,
            "note": None,
        }
        for i in range(min(drift, 50))
    ]
    return {
        "sku": None,
        "pages": 200,
        "skus_compared": SKUS,
        "drift": drift,
        "drift_fields": {"price": drift - drift // 3 * 2, "qty": drift // 3,
                         "promotional_price": drift // 3},
        "frozen": 4,
        "orphans": 3,
        "missing": 2,
        "busy_fields": 5,
        "repair": False,
        "repaired_rows": 0,
        "not_repaired": 0,
        "drift_sample": sample,
        "orphan_sample": ["LEGACY-001", "LEGACY-002", "LEGACY-003"],
        "missing_sample": [
            {"sku": "SKU-00042", "parent_sku": None},
            {"sku": "SKU-00043", "parent_sku": None},
        ],
    }  # fmt: skip


def fill(db_url: str, rows: int = 1_000_000) -> dict[str, float]:
    """Write the month (into a migrated, empty database); returns seconds per table."""
    engine = get_engine(db_url)
    params: dict[str, Any] = {
        "rows": rows,
        "days": DAYS,
        "skus": SKUS,
        "orders": ORDERS,
        "accounts": list(ACCOUNTS),
    }
    took: dict[str, float] = {}
    for name, sql in (
        ("outbox", _OUTBOX),
        ("items", _ITEMS),
        ("orders", _ORDERS),
        ("inbox", _INBOX),
        ("order lines", _LINES),
        ("run log", _RUNS),
        ("sync errors", _SYNC_ERRORS),
    ):
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(sa.text(sql), params)
        took[name] = time.perf_counter() - started
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(
            sa.text("SELECT setval('skysync_outbox_id_seq', (SELECT max(id) FROM skysync_outbox))")
        )
        for day in range(DAYS):
            conn.execute(
                sa.text(
                    "INSERT INTO skysync_run (account, kind, started_at, finished_at, summary) "
                    "VALUES ('default', 'reconcile', now() - interval '1 day' * :d - "
                    "interval '3 hours', now() - interval '1 day' * :d - interval '2 hours 38 "
                    "minutes', CAST(:s AS jsonb))"
                ),
                {"d": day, "s": json.dumps(_reconcile_summary(37 if day == 0 else 3))},
            )
        for hours, user, message in _CONSOLE_ACTIONS:
            conn.execute(
                sa.text(
                    "INSERT INTO skysync_run (account, kind, started_at, finished_at, summary) "
                    "VALUES ('default', 'console_action', now() - interval '1 hour' * :h, "
                    "now() - interval '1 hour' * :h, CAST(:s AS jsonb))"
                ),
                {"h": hours, "s": json.dumps({"user": user, "message": message})},
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    took["vacuum analyze"] = time.perf_counter() - started
    return took
