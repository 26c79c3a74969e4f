"""What is late, pure (skysync/domain/late.py), and how it reads (skysync/reporting/late.py):
each reason's rule at its edges, which statuses count as still to ship, the thresholds as the
settings give them, and the words a line uses."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from skysync.config import ConfigError, load_settings
from skysync.domain.late import (
    NOT_TO_SHIP,
    TO_INVOICE,
    TO_SHIP,
    LateRules,
    Reason,
    judge_inbox,
    judge_invoice,
    judge_ship,
)
from skysync.domain.order_flow import NEXT_STATUSES
from skysync.entrypoints.cli import cli
from skysync.reporting.late import brasilia, span

NOW = datetime(2026, 12, 8, 13, 0, tzinfo=UTC)  # 10:00 in Brasília
RULES = LateRules()  # 4 h margin, 24 h to invoice, 30 min in the inbox
H, MIN = timedelta(hours=1), timedelta(minutes=1)


def test_the_statuses_split_into_to_ship_and_not() -> None:
    """Every status of SkyHub's table is either still to ship or never late to ship, and the
    orders to invoice are among those to ship."""
    assert set(NEXT_STATUSES) <= TO_SHIP | NOT_TO_SHIP
    assert not TO_SHIP & NOT_TO_SHIP
    assert TO_INVOICE <= TO_SHIP
    assert {"payment_received", "order_invoiced"} <= TO_SHIP
    assert {"book_product", "order_shipped", "shipment_exception", "complete"} <= NOT_TO_SHIP


@pytest.mark.parametrize(
    ("limit", "overdue"),
    [
        (NOW - 3 * H, True),  # passed 3 h ago
        (NOW, True),  # due this very moment: passed
        (NOW + 2 * H, False),  # within the 4 h margin
        (NOW + 4 * H, False),  # at the margin's edge: listed
    ],
)
def test_an_order_to_ship_near_or_past_its_limit_is_late(limit: datetime, overdue: bool) -> None:
    late = judge_ship(NOW, RULES, status="order_invoiced", expedition_limit=limit)
    assert late is not None and late.reason == Reason.SHIP
    assert late.deadline == late.since == limit
    assert late.overdue(NOW) is overdue
    assert late.late_by(NOW) == NOW - limit


def test_an_order_to_ship_is_not_late_before_the_margin_nor_once_shipped() -> None:
    ahead = NOW + 4 * H + timedelta(seconds=1)
    assert judge_ship(NOW, RULES, status="payment_received", expedition_limit=ahead) is None
    past = NOW - 30 * H
    for status in (*sorted(NOT_TO_SHIP), "some_new_status", None):
        assert judge_ship(NOW, RULES, status=status, expedition_limit=past) is None, status
    assert judge_ship(NOW, RULES, status="payment_received", expedition_limit=None) is None


def test_a_zero_margin_lists_only_orders_past_their_limit() -> None:
    rules = LateRules(ship_margin=timedelta(0))
    assert judge_ship(NOW, rules, status="order_invoiced", expedition_limit=NOW + MIN) is None
    assert judge_ship(NOW, rules, status="order_invoiced", expedition_limit=NOW) is not None


def test_an_approved_order_is_late_to_invoice_after_the_threshold() -> None:
    approved = NOW - 26 * H
    late = judge_invoice(NOW, RULES, status="payment_received", approved_at=approved)
    assert late is not None and late.reason == Reason.INVOICE
    assert late.since == approved and late.deadline == approved + 24 * H
    assert late.late_by(NOW) == 2 * H and late.overdue(NOW)
    edge = NOW - 24 * H
    assert judge_invoice(NOW, RULES, status="payment_received", approved_at=edge) is not None
    recent = NOW - 23 * H
    assert judge_invoice(NOW, RULES, status="payment_received", approved_at=recent) is None
    for status in ("order_invoiced", "order_canceled", "book_product", None):
        assert judge_invoice(NOW, RULES, status=status, approved_at=approved) is None
    assert judge_invoice(NOW, RULES, status="payment_received", approved_at=None) is None


def test_an_inbox_row_is_late_until_the_erp_consumes_it() -> None:
    received = NOW - 45 * MIN
    late = judge_inbox(NOW, RULES, received_at=received, consumed_at=None)
    assert late is not None and late.reason == Reason.INBOX
    assert late.deadline == received + 30 * MIN and late.late_by(NOW) == 15 * MIN
    assert judge_inbox(NOW, RULES, received_at=received, consumed_at=NOW) is None
    assert judge_inbox(NOW, RULES, received_at=NOW - 29 * MIN, consumed_at=None) is None


@given(
    limit=st.timedeltas(min_value=-30 * H, max_value=30 * H),
    margin=st.timedeltas(min_value=timedelta(0), max_value=30 * H),
)
def test_late_to_ship_is_exactly_the_cutoff_the_store_filters_by(
    limit: timedelta, margin: timedelta
) -> None:
    """The store's SQL keeps limits at or before ``ship_cutoff``; the rule agrees everywhere."""
    rules = LateRules(ship_margin=margin)
    late = judge_ship(NOW, rules, status="order_invoiced", expedition_limit=NOW + limit)
    assert (late is not None) == (NOW + limit <= rules.ship_cutoff(NOW))
    if late is not None:
        assert late.overdue(NOW) == (limit <= timedelta(0))


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(seconds=42), "42 s"),
        (12 * MIN + timedelta(seconds=59), "12 min"),
        (3 * H + 12 * MIN, "3 h 12 min"),
        (24 * H, "24 h"),
        (-(2 * H + 5 * MIN), "2 h 5 min"),
        (26 * H + 3 * MIN, "26 h 3 min"),
        (50 * H + 59 * MIN, "2 d 2 h"),
        (72 * H, "3 d"),
        (4 * H, "4 h"),
    ],
)
def test_a_span_reads_as_an_operator_says_it(delta: timedelta, text: str) -> None:
    assert span(delta) == text


def test_times_are_shown_in_brasilia() -> None:
    assert brasilia(NOW) == "2026-12-08 10:00 BRT"


def test_the_settings_give_the_rules(clean_env: object) -> None:
    assert load_settings().late_rules == LateRules()
    rules = load_settings(
        late_ship_margin_hours=0, late_invoice_hours=48, late_inbox_minutes=5.5
    ).late_rules
    assert rules == LateRules(timedelta(0), 48 * H, timedelta(minutes=5.5))


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SKYSYNC_LATE_SHIP_MARGIN_HOURS", "-1", "greater than or equal to 0"),
        ("SKYSYNC_LATE_SHIP_MARGIN_HOURS", "four", "valid number"),
        ("SKYSYNC_LATE_INVOICE_HOURS", "0", "greater than 0"),
        ("SKYSYNC_LATE_INVOICE_HOURS", "inf", "finite number"),
        ("SKYSYNC_LATE_INBOX_MINUTES", "100000", "less than or equal to 10080"),
    ],
)
def test_a_bad_threshold_is_refused_naming_its_variable(
    clean_env: object, name: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(**{name.removeprefix("SKYSYNC_").lower(): value})
    assert f"{name}: " in str(refused.value) and message in str(refused.value)
    shown = CliRunner().invoke(cli, ["check-config"], env={name: value})
    assert shown.exit_code == 2 and name in shown.output


def test_check_config_shows_the_thresholds(clean_env: object) -> None:
    shown = CliRunner().invoke(cli, ["check-config"], env={"SKYSYNC_LATE_INBOX_MINUTES": "45"})
    assert shown.exit_code == 0, shown.output
    settings = json.loads(shown.stdout)
    assert settings["late_ship_margin_hours"] == 4
    assert settings["late_invoice_hours"] == 24
    assert settings["late_inbox_minutes"] == 45
