"""What is late (issue 22), end to end on SQLite and PostgreSQL: orders created in the emulator
over HTTP with their items and dates, pulled by `skysync orders pull` (the real pull path), then
`skysync orders late` (lines, --json, exit codes), `skysync status` and the metrics. The clock is
the real one: the dates are set relative to now, and an inbox row is made old by moving its
``received_at`` back, never by sleeping.

Every test runs in an empty directory with no SKYSYNC_* inherited (conftest's clean_env)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from conftest import SandboxAdmin, sandbox_fixture
from relay_helpers import CLIENT_CREDENTIALS, insert, row

from skysync.domain.order_flow import BRASILIA
from skysync.emulator import Sandbox, SandboxAccount
from skysync.entrypoints.cli import cli
from skysync.reporting.late import brasilia
from skysync.reporting.metrics import registry_for
from skysync.store.db import Database, get_engine, session_scope
from skysync.store.models import Order, OrderInbox, utcnow

pytestmark = pytest.mark.usefixtures("clean_env")

sb = sandbox_fixture()

PAST = "Lojas Americanas-1700000000001-01"  # invoiced, its limit passed 3 h 12 min ago
SOON = "Submarino-1700000000002-01"  # paid, its limit 2 h 5 min ahead: within the 4 h margin
UNINVOICED = "Shoptime-1700000000003-01"  # approved 30 h ago, not invoiced
SHIPPED = "Lojas Americanas-1700000000004-01"  # shipped: never late to ship
UNPAID = "Lojas Americanas-1700000000005-01"  # awaiting payment: the seller cannot ship it
EASY = "Lojas Americanas-1700000000006-01"  # paid, its limit three days ahead
HEADERS = {
    "X-User-Email": CLIENT_CREDENTIALS["email"],
    "X-Api-Key": CLIENT_CREDENTIALS["api_key"],
    "X-Accountmanager-Key": CLIENT_CREDENTIALS["account_key"],
}
ITEMS = [{"id": "SKU-1", "product_id": "P-1", "name": "Caneca", "qty": 2, "special_price": 25.0}]
SHIPMENT = {
    "code": "SHIP-1",
    "items": [{"sku": "SKU-1", "qty": 2}],
    "track": {"code": "BR123456789BR", "carrier": "Correios", "method": "PAC"},
}
H, MIN, S = timedelta(hours=1), timedelta(minutes=1), timedelta(seconds=1)


def at(delta: timedelta) -> str:
    """Now plus ``delta`` as SkyHub writes an order's date: Brasília time, whole seconds."""
    return (datetime.now(BRASILIA) + delta).isoformat(timespec="seconds")


def create_order(base_url: str, code: str, status: str, **dates: str) -> dict[str, Any]:
    """POST /orders on the emulator's SkyHub API, with items and the dates given."""
    order = {"code": code, "status": status, "items": ITEMS, **dates}
    answer = httpx.post(f"{base_url}/orders", json={"order": order}, headers=HEADERS, timeout=5)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def run(args: list[str], env: dict[str, str]) -> Result:
    return CliRunner().invoke(cli, args, env=env)


def pull(env: dict[str, str], *args: str) -> dict[str, Any]:
    pulled = run(["orders", "pull", *args], env)
    assert pulled.exit_code == 0, pulled.output
    summary: dict[str, Any] = json.loads(pulled.stdout)
    return summary


def as_json(result: Result) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def line_of(result: Result, code: str) -> str:
    found = [line for line in result.stdout.splitlines() if code in line]
    assert len(found) == 1, result.stdout
    return found[0]


def backdate_inbox(db_url: str, code: str, age: timedelta) -> tuple[int, datetime]:
    """The inbox row of ``code`` as if skysync had stored it ``age`` ago; its id and time."""
    when = utcnow() - age
    with session_scope(db_url) as session:
        row_id = session.execute(
            sa.select(OrderInbox.id).where(OrderInbox.code == code)
        ).scalar_one()
        session.execute(
            sa.update(OrderInbox).where(OrderInbox.id == row_id).values(received_at=when)
        )
    return row_id, when


@pytest.fixture
def env(db_url: str, sb: Sandbox) -> dict[str, str]:
    return {"SKYSYNC_DATABASE_URL": db_url, "SKYSYNC_SKYHUB_URL": sb.base_url}


@pytest.fixture
def seeded(sb: Sandbox, env: dict[str, str]) -> dict[str, datetime]:
    """The six orders above in the emulator, pulled: their dates as skysync reads them."""
    dates = {
        PAST: at(-(3 * H + 12 * MIN + 30 * S)),
        SOON: at(2 * H + 5 * MIN + 30 * S),
        UNINVOICED: at(3 * 24 * H),
        SHIPPED: at(-5 * H),
        UNPAID: at(-H),
        EASY: at(3 * 24 * H),
    }
    approved = at(-(30 * H + 30 * S))
    statuses = {
        PAST: "order_invoiced",
        SOON: "payment_received",
        UNINVOICED: "payment_received",
        SHIPPED: "order_shipped",
        UNPAID: "book_product",
        EASY: "payment_received",
    }
    for code, status in statuses.items():
        more = {"approved_date": approved} if code == UNINVOICED else {}
        if code in (SOON, EASY):
            more = {"approved_date": at(-H)}
        create_order(
            sb.base_url,
            code,
            status,
            expedition_limit_date=dates[code],
            estimated_delivery=at(7 * 24 * H)[:10],
            **more,
        )
    assert pull(env)["stored"] == 6
    found = {code: datetime.fromisoformat(when) for code, when in dates.items()}
    found["approved"] = datetime.fromisoformat(approved)
    return found


# -- skysync orders late --------------------------------------------------------------------------


def test_late_orders_are_listed_with_their_step_and_how_late(
    env: dict[str, str], seeded: dict[str, datetime]
) -> None:
    late = run(["orders", "late"], env)
    assert late.exit_code == 1, late.output
    lines = late.stdout.splitlines()
    assert lines[0].startswith("late at ")
    assert "2 to ship (1 past the expedition limit, 1 due within 4 h)" in lines[0]
    assert "1 not invoiced after 24 h" in lines[0]
    assert "0 inbox row(s) not consumed after 30 min" in lines[0]
    # the most overdue first, then those to invoice; nothing shipped, unpaid or far off
    assert [line[:12].strip() for line in lines[1:]] == [
        "LATE TO SHIP",
        "DUE TO SHIP",
        "NOT INVOICED",
    ]
    past = line_of(late, PAST)
    assert past.startswith("LATE TO SHIP  default  ")
    assert "order_invoiced" in past
    assert past.endswith(f"expedition limit {brasilia(seeded[PAST])} passed 3 h 12 min ago")
    soon = line_of(late, SOON)
    assert soon.startswith("DUE TO SHIP ") and "payment_received" in soon
    assert soon.endswith(
        f"expedition limit {brasilia(seeded[SOON])}: due in 2 h 5 min (margin 4 h)"
    )
    uninvoiced = line_of(late, UNINVOICED)
    assert uninvoiced.startswith("NOT INVOICED  default  ") and "payment_received" in uninvoiced
    assert uninvoiced.endswith(
        f"approved {brasilia(seeded['approved'])}: not invoiced after 30 h (limit 24 h)"
    )
    for code in (SHIPPED, UNPAID, EASY):
        assert code not in late.stdout
    assert brasilia(seeded[PAST]).endswith(" BRT")


def test_late_orders_as_json(env: dict[str, str], seeded: dict[str, datetime]) -> None:
    late = run(["orders", "late", "--json"], env)
    assert late.exit_code == 1, late.output
    report = as_json(late)
    assert report["late"] == 3 and report["complete"] is True
    assert report["thresholds"] == {
        "ship_margin_hours": 4.0,
        "invoice_hours": 24.0,
        "inbox_minutes": 30.0,
    }
    assert report["counts"] == {
        "ship": 2,
        "ship_past_limit": 1,
        "invoice": 1,
        "inbox": 0,
        "oldest_unconsumed_age_s": report["counts"]["oldest_unconsumed_age_s"],
    }
    assert report["counts"]["oldest_unconsumed_age_s"] < 60  # every inbox row is fresh
    assert list(report["accounts"]) == ["default"]
    items = {(i["reason"], i["code"]): i for i in report["items"]}
    assert sorted(items) == [("invoice", UNINVOICED), ("ship", PAST), ("ship", SOON)]
    past, soon = items[("ship", PAST)], items[("ship", SOON)]
    assert (past["account"], past["status"], past["label"]) == (
        "default",
        "order_invoiced",
        "LATE TO SHIP",
    )
    assert past["overdue"] is True and 3 * 3600 + 12 * 60 < past["late_by_s"] < 3 * 3600 + 780
    assert datetime.fromisoformat(past["since"]) == seeded[PAST]
    assert soon["overdue"] is False and soon["late_by_s"] < 0 and soon["label"] == "DUE TO SHIP"
    invoice = items[("invoice", UNINVOICED)]
    assert datetime.fromisoformat(invoice["deadline"]) == seeded["approved"] + 24 * H
    assert 6 * 3600 <= invoice["late_by_s"] < 6 * 3600 + 120
    assert invoice["inbox_id"] is None and "not invoiced after 30 h" in invoice["text"]
    # --limit bounds the lines of each reason, never the counts
    bounded = as_json(run(["orders", "late", "--json", "--limit", "1"], env))
    assert bounded["late"] == 3 and bounded["complete"] is False
    assert [i["code"] for i in bounded["items"]] == [PAST, UNINVOICED]
    assert bounded["counts"] == report["counts"]
    text = run(["orders", "late", "--limit", "1"], env)
    assert text.exit_code == 1
    assert PAST in text.stdout and UNINVOICED in text.stdout and SOON not in text.stdout
    assert text.stdout.splitlines()[-1] == "... and 1 more not listed (raise --limit)"


def test_nothing_late_exits_0(sb: Sandbox, env: dict[str, str]) -> None:
    empty = run(["orders", "late"], env)
    assert empty.exit_code == 0, empty.output
    assert empty.stdout.startswith("nothing late at ")
    assert "(expedition limits within 4 h, invoices after 24 h, inbox rows after 30 min)" in (
        empty.stdout
    )
    create_order(sb.base_url, EASY, "payment_received", expedition_limit_date=at(5 * H))
    pull(env)
    assert run(["orders", "late"], env).exit_code == 0
    report = as_json(run(["orders", "late", "--json"], env))
    assert report["late"] == 0 and report["items"] == []
    # a wider margin makes the same order due
    wider = run(["orders", "late"], {**env, "SKYSYNC_LATE_SHIP_MARGIN_HOURS": "6"})
    assert wider.exit_code == 1 and "DUE TO SHIP" in line_of(wider, EASY)


def test_an_order_the_marketplace_moves_is_late_after_the_next_pull(
    db_url: str, sb: Sandbox, env: dict[str, str]
) -> None:
    """SkyHub moves an order's expedition limit (the emulator's admin API): the order is
    queued again, and once pulled, skysync keeps its new dates and calls it late."""
    create_order(
        sb.base_url,
        EASY,
        "payment_received",
        approved_date=at(-H),
        expedition_limit_date=at(3 * 24 * H),
        estimated_delivery=at(7 * 24 * H)[:10],
    )
    pull(env)
    assert run(["orders", "late"], env).exit_code == 0
    moved = SandboxAdmin(sb.base_url).move_order_dates(
        EASY,
        {"expedition_limit_date": at(-(H + 30 * S)), "estimated_delivery": at(2 * 24 * H)[:10]},
    )
    assert moved.status_code == 200, moved.text
    assert run(["orders", "late"], env).exit_code == 0  # skysync has not seen it yet
    assert pull(env)["stored"] == 1  # an update (a later updated_at), not a redelivery
    late = run(["orders", "late"], env)
    assert late.exit_code == 1, late.output
    line = line_of(late, EASY)
    limit = datetime.fromisoformat(moved.json()["expedition_limit_date"])
    assert line.startswith("LATE TO SHIP  default  ")
    assert line.endswith(f"expedition limit {brasilia(limit)} passed 1 h ago")
    with session_scope(db_url, readonly=True) as session:
        order = session.get(Order, ("default", EASY))
        assert order is not None
        assert order.expedition_limit_at == limit
        assert order.estimated_delivery_at is not None
        assert (
            order.estimated_delivery_at.astimezone(BRASILIA).date().isoformat()
            == (moved.json()["estimated_delivery"])
        )


def test_an_order_shipped_through_skysync_is_no_longer_late(
    db_url: str, sb: Sandbox, env: dict[str, str]
) -> None:
    """The ERP writes the shipment; once skysync has sent it, the order is order_shipped and
    no longer late, whatever its limit."""
    create_order(sb.base_url, PAST, "order_invoiced", expedition_limit_date=at(-2 * H))
    pull(env)
    assert run(["orders", "late"], env).exit_code == 1
    shipment = insert(db_url, "order_shipment", PAST, SHIPMENT)
    assert run(["orders", "late"], env).exit_code == 1  # written, not sent yet: still late
    drained = run(["drain"], env)
    assert drained.exit_code == 0, drained.output
    assert row(db_url, shipment).state == "sent"
    assert sb.state()["orders"][PAST]["status"]["code"] == "order_shipped"
    late = run(["orders", "late"], env)
    assert late.exit_code == 0, late.output
    assert PAST not in late.stdout


def test_an_inbox_row_the_erp_does_not_consume_is_late_until_it_does(
    db_url: str, sb: Sandbox, env: dict[str, str]
) -> None:
    create_order(sb.base_url, EASY, "payment_received", expedition_limit_date=at(3 * 24 * H))
    pull(env)
    row_id, received = backdate_inbox(db_url, EASY, 45 * MIN + 30 * S)
    late = run(["orders", "late"], env)
    assert late.exit_code == 1, late.output
    line = line_of(late, EASY)
    assert line.startswith("NOT CONSUMED  default  ") and "payment_received" in line
    assert line.endswith(
        f"inbox row {row_id}, received {brasilia(received)}: not consumed by the ERP after "
        "45 min (limit 30 min)"
    )
    item = as_json(run(["orders", "late", "--json"], env))["items"][0]
    assert (item["reason"], item["inbox_id"], item["code"]) == ("inbox", row_id, EASY)
    # with an hour's threshold it is not late yet
    patient = run(["orders", "late"], {**env, "SKYSYNC_LATE_INBOX_MINUTES": "60"})
    assert patient.exit_code == 0, patient.output
    # the ERP consumes it, as the ERP contract says
    with get_engine(db_url).begin() as conn:
        conn.execute(
            sa.text("UPDATE skysync_order_inbox SET consumed_at = CURRENT_TIMESTAMP WHERE id = :i"),
            {"i": row_id},
        )
    consumed = run(["orders", "late"], env)
    assert consumed.exit_code == 0, consumed.output
    assert as_json(run(["orders", "late", "--json"], env))["counts"]["inbox"] == 0


# -- skysync status and the metrics ---------------------------------------------------------------


def test_status_counts_what_is_late_as_problems(
    db_url: str, env: dict[str, str], seeded: dict[str, datetime]
) -> None:
    backdate_inbox(db_url, EASY, 45 * MIN + 30 * S)
    status = run(["status", "--json"], env)
    assert status.exit_code == 1, status.output
    report = as_json(status)
    late = report["late"]
    assert {k: late[k] for k in ("ship", "ship_past_limit", "invoice", "inbox")} == {
        "ship": 2,
        "ship_past_limit": 1,
        "invoice": 1,
        "inbox": 1,
    }
    assert 45 * 60 <= late["oldest_unconsumed_age_s"] < 47 * 60
    assert report["accounts"]["default"]["late"] == late
    assert report["problems"] == [
        "2 order(s) paid and not shipped are late: 1 past their expedition limit, 1 due within "
        "4 h (`skysync orders late`)",
        "1 approved order(s) not invoiced after 24 h (`skysync orders late`)",
        "1 inbox row(s) not consumed by the ERP after 30 min, the oldest 45 min old: is the ERP "
        "reading orders? (`skysync orders late`)",
    ]
    text = run(["status"], env)
    assert text.exit_code == 1
    assert (
        "late: 2 to ship (1 past the expedition limit), 1 not invoiced, 1 inbox row(s) not "
        "consumed; the oldest unconsumed inbox row 45 min old"
    ) in text.stdout
    assert "UNHEALTHY:" in text.stdout and "is the ERP reading orders?" in text.stdout
    # the thresholds are the settings': with wider ones nothing is late
    relaxed = {
        **env,
        "SKYSYNC_LATE_SHIP_MARGIN_HOURS": "0",
        "SKYSYNC_LATE_INVOICE_HOURS": "48",
        "SKYSYNC_LATE_INBOX_MINUTES": "60",
    }
    calmer = as_json(run(["status", "--json"], relaxed))
    assert calmer["late"]["ship"] == 1 and calmer["late"]["invoice"] == 0
    assert calmer["late"]["inbox"] == 0
    assert len([p for p in calmer["problems"] if "late" in p or "ERP" in p]) == 1


def test_metrics_give_late_orders_by_reason_and_the_oldest_unconsumed_row(
    db_url: str, sb: Sandbox, env: dict[str, str]
) -> None:
    registry = registry_for(Database.for_url(db_url))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"account": "default", **labels})

    # nothing yet: every reason present, 0
    for reason in ("ship", "invoice", "inbox"):
        assert value("skysync_orders_late", reason=reason) == 0
    assert value("skysync_orders_past_expedition_limit") == 0
    assert value("skysync_inbox_oldest_unconsumed_age_seconds") == 0

    create_order(sb.base_url, PAST, "order_invoiced", expedition_limit_date=at(-H))
    create_order(sb.base_url, SOON, "payment_received", expedition_limit_date=at(H))
    create_order(
        sb.base_url,
        UNINVOICED,
        "payment_received",
        approved_date=at(-25 * H),
        expedition_limit_date=at(3 * 24 * H),
    )
    pull(env)
    backdate_inbox(db_url, UNINVOICED, 2 * H)
    assert value("skysync_orders_late", reason="ship") == 2
    assert value("skysync_orders_past_expedition_limit") == 1
    assert value("skysync_orders_late", reason="invoice") == 1
    assert value("skysync_orders_late", reason="inbox") == 1
    age = value("skysync_inbox_oldest_unconsumed_age_seconds")
    assert age is not None and 2 * 3600 <= age < 2 * 3600 + 120
    # the thresholds follow SKYSYNC_LATE_*, as `skysync metrics` passes them
    from skysync.config import load_settings

    rules = load_settings(late_ship_margin_hours=0, late_inbox_minutes=180).late_rules
    strict = registry_for(Database.for_url(db_url), late_rules=rules)
    labels = {"account": "default", "reason": "ship"}
    assert strict.get_sample_value("skysync_orders_late", labels) == 1
    labels["reason"] = "inbox"
    assert strict.get_sample_value("skysync_orders_late", labels) == 0


# -- several accounts ------------------------------------------------------------------------------

SUL, SUL_EMAIL, SUL_KEY = "loja-sul", "sul@loja.example", "sul-api-key-5e1f0a9b7c"


def test_late_orders_of_several_accounts(db_url: str, clean_env: Path) -> None:
    """Two accounts, each its own queue: `orders late` names each line's account and takes
    --account; status has a problem per account; the metrics a series per account."""
    accounts_file = clean_env / "accounts.toml"
    accounts_file.write_text(
        f'[accounts.{SUL}]\nemail = "{SUL_EMAIL}"\napi_key = "{SUL_KEY}"\n', encoding="utf-8"
    )
    from relay_helpers import sandbox_config

    with Sandbox(sandbox_config(accounts=[SandboxAccount(SUL, SUL_EMAIL, SUL_KEY)])) as sb:
        env = {
            "SKYSYNC_DATABASE_URL": db_url,
            "SKYSYNC_SKYHUB_URL": sb.base_url,
            "SKYSYNC_ACCOUNTS_FILE": str(accounts_file),
        }
        create_order(sb.base_url, PAST, "order_invoiced", expedition_limit_date=at(-H))
        theirs = sb.seed_order(
            {"code": SOON, "status": "payment_received", "expedition_limit_date": at(H)},
            account=SUL,
        )
        assert theirs["code"] == SOON
        pull(env)
        pull(env, "--account", SUL)

    late = run(["orders", "late"], env)
    assert late.exit_code == 1, late.output
    assert line_of(late, PAST).startswith("LATE TO SHIP  default   ")
    assert line_of(late, SOON).startswith(f"DUE TO SHIP   {SUL}  ")
    theirs_only = run(["orders", "late", "--account", SUL, "--json"], env)
    assert theirs_only.exit_code == 1
    assert [i["code"] for i in as_json(theirs_only)["items"]] == [SOON]
    unknown = run(["orders", "late", "--account", "loja-x"], env)
    assert unknown.exit_code == 2 and "loja-x" in unknown.output

    report = as_json(run(["status", "--json"], env))
    assert report["accounts"]["default"]["late"]["ship_past_limit"] == 1
    assert report["accounts"][SUL]["late"]["ship"] == 1
    late_problems = [p for p in report["problems"] if "not shipped" in p]
    assert late_problems == [
        "account default: 1 order(s) paid and not shipped are late: 1 past their expedition "
        "limit, 0 due within 4 h (`skysync orders late --account default`)",
        f"account {SUL}: 1 order(s) paid and not shipped are late: 0 past their expedition "
        f"limit, 1 due within 4 h (`skysync orders late --account {SUL}`)",
    ]
    text = run(["status"], env).stdout
    assert f"  {SUL}: " in text and "late: 1 to ship (0 past the expedition limit)" in text

    registry = registry_for(Database.for_url(db_url), lambda: ["default", SUL])
    for account, past in (("default", 1), (SUL, 0)):
        labels = {"account": account, "reason": "ship"}
        assert registry.get_sample_value("skysync_orders_late", labels) == 1
        labels.pop("reason")
        assert registry.get_sample_value("skysync_orders_past_expedition_limit", labels) == past


# -- the query plan --------------------------------------------------------------------------------


def test_orders_to_ship_are_reached_through_their_index(sqlite_url: str) -> None:
    """The late queries read the open orders through ix_skysync_order_status_limit (0013), not
    the whole history of orders (SQLite's plan; PostgreSQL picks by its statistics)."""
    from skysync.domain.late import TO_SHIP, LateRules

    cutoff = LateRules().ship_cutoff(utcnow())
    query = sa.select(Order.code).where(
        Order.status.in_(sorted(TO_SHIP)), Order.expedition_limit_at <= cutoff
    )
    with get_engine(sqlite_url).connect() as conn:
        compiled = query.compile(conn, compile_kwargs={"literal_binds": True})
        plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}"))
    assert "ix_skysync_order_status_limit" in plan, plan
