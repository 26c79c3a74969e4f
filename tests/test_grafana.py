"""The Grafana dashboard (deploy/grafana/skysync.json): every metric its queries name is one that
`skysync metrics` exports (scraped from a real collector on both databases), and every query is
PromQL that promtool accepts (each checked as a recording rule, Grafana's variables filled)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from test_alerts import METRIC, exported_names, run_promtool

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "skysync.json"


def panels() -> list[dict[str, Any]]:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [p for p in document["panels"] if p["type"] != "row"]


def queries() -> list[str]:
    return [t["expr"] for p in panels() for t in p["targets"]]


def test_the_dashboard_is_complete() -> None:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert (document["uid"], document["title"]) == ("skysync", "skysync")
    variables = {v["name"] for v in document["templating"]["list"]}
    assert variables == {"datasource", "account"}
    ids = [p["id"] for p in document["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["title"] and panel["description"], panel
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert 'account=~"$account"' in target["expr"], (panel["title"], target["expr"])


def test_every_metric_the_dashboard_queries_is_exported(db_url: str) -> None:
    exported = exported_names(db_url)
    named = {name for query in queries() for name in METRIC.findall(query)}
    assert len(named) >= 20, sorted(named)
    assert named <= exported, f"not exported: {sorted(named - exported)}"


def test_promtool_accepts_every_query(tmp_path: Path) -> None:
    rules = [
        {"record": f"skysync:dashboard_query_{n}", "expr": re.sub(r"\$\{?account\}?", ".*", q)}
        for n, q in enumerate(queries())
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = run_promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout + checked.stderr
