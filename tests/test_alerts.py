"""The Prometheus alerting rules (deploy/prometheus/alerts.yml): promtool accepts them and their
unit tests pass (alerts.test.yml feeds series and expects each alert to fire, and some not to),
every alert is tested firing and documented, and every metric they name is one that `skysync
metrics` exports, scraped from a real collector on both databases.

promtool comes with Debian's prometheus package, which `make test` installs when it is missing
(.ci/install-promtool): without it these tests fail, never skip."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from skysync.reporting.metrics import registry_for
from skysync.store.db import Database

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
METRIC = re.compile(r"\bskysync_[a-z0-9_]+\b")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool is not on PATH: `make test` installs it first (.ci/install-promtool, "
            "Debian's prometheus package); or run `apt-get install prometheus`"
        )
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    checked = run_promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in checked.stdout + checked.stderr


def test_the_rules_unit_tests_pass() -> None:
    tested = run_promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout + tested.stderr


def test_a_wrong_expectation_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests can fail: the same file expecting the inbox alert one threshold early."""
    shutil.copy(RULES, tmp_path / "alerts.yml")
    text = RULE_TESTS.read_text(encoding="utf-8")
    wrong = text.replace("- eval_time: 33m # over 1800 s since 31m: pending", "- eval_time: 40m", 1)
    assert wrong != text
    (tmp_path / "alerts.test.yml").write_text(wrong, encoding="utf-8")
    tested = run_promtool("test", "rules", str(tmp_path / "alerts.test.yml"))
    assert tested.returncode != 0
    assert "SkysyncInboxNotConsumed" in tested.stdout + tested.stderr


def test_every_alert_is_complete_tested_and_documented() -> None:
    """Each alert has a `for:`, a severity, a summary and a description; fires in a unit test;
    and docs/alerts.md names it."""
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    held_back = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if not case.get("exp_alerts")
    }
    docs = (ROOT / "docs" / "alerts.md").read_text(encoding="utf-8")
    names = []
    for rule in alert_rules():
        name = rule["alert"]
        names.append(name)
        assert rule.get("for"), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert name in fired, f"{name} never fires in alerts.test.yml"
        assert f"`{name}`" in docs, f"{name} is not in docs/alerts.md"
    assert len(set(names)) == len(names)
    assert held_back >= {"SkysyncInboxNotConsumed", "SkysyncOldestPendingTooOld"}
    expected = {
        "SkysyncOrdersPastExpeditionLimit",
        "SkysyncOrdersDueToShip",
        "SkysyncOrdersNotInvoiced",
        "SkysyncInboxNotConsumed",
        "SkysyncRowsDead",
        "SkysyncRowsHeld",
        "SkysyncOldestPendingTooOld",
        "SkysyncCredentialsRefused",
        "SkysyncDriftFound",
    }
    assert expected <= set(names)


def exported_names(db_url: str) -> set[str]:
    """The names of the series `skysync metrics` serves, from its collector on a migrated
    database: every family's ``# TYPE`` line (there with no sample too), counters with
    their ``_total``."""
    registry = registry_for(Database.for_url(db_url), lambda: ["default", "loja-sul"])
    text = generate_latest(registry).decode()
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def test_every_metric_the_rules_name_is_exported(db_url: str) -> None:
    exported = exported_names(db_url)
    assert {"skysync_orders_late", "skysync_inbox_oldest_unconsumed_age_seconds"} <= exported
    in_rules = set(METRIC.findall(RULES.read_text(encoding="utf-8")))
    in_rules -= {"skysync_order_inbox"}  # a table named in a description, not a metric
    assert in_rules, "no metric found in alerts.yml"
    assert in_rules <= exported, f"not exported: {sorted(in_rules - exported)}"
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
    fed = {series["series"].split("{")[0] for test in tests for series in test["input_series"]} - {
        "up"
    }
    assert fed <= exported, f"alerts.test.yml feeds series never exported: {fed - exported}"
