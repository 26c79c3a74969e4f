"""The operator's side of several SkyHub accounts (issue #21): ``--account`` on the commands,
``skysync accounts list``, and ``skysync status`` per account, with two accounts configured
through a real accounts file (SKYSYNC_ACCOUNTS_FILE) and rows the ERP wrote with plain SQL.

Every test runs in an empty directory with no SKYSYNC_* inherited (conftest's clean_env), on
SQLite and on PostgreSQL (``db_url``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from relay_helpers import sandbox_config

from skysync.emulator import Sandbox, SandboxAccount
from skysync.entrypoints.cli import cli
from skysync.store.db import get_engine

pytestmark = pytest.mark.usefixtures("clean_env")

SUL = "loja-sul"
SUL_EMAIL = "sul@loja.example"
SUL_KEY = "sul-api-key-5e1f0a9b7c"
SHARED_ACCOUNT_KEY = "acct-shared-3d2c1b0a"
SECRETS = (SUL_KEY, SHARED_ACCOUNT_KEY)


@pytest.fixture(autouse=True)
def _root_logging_as_it_was() -> Iterator[None]:
    """The CLI in this process installs skysync's log handler (configure_logging), whose
    redacting filter rewrites records: put the root logger back, so that later tests (the
    accounts file's, which read log messages) see their records as logged."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def env(db_url: str, clean_env: Path) -> dict[str, str]:
    """Two accounts: ``default`` (the single-account settings: none, so the emulator's) and
    loja-sul from the accounts file."""
    path = clean_env / "accounts.toml"
    path.write_text(
        f'[accounts.{SUL}]\nemail = "{SUL_EMAIL}"\napi_key = "{SUL_KEY}"\n'
        f'account_key = "{SHARED_ACCOUNT_KEY}"\n',
        encoding="utf-8",
    )
    return {"SKYSYNC_DATABASE_URL": db_url, "SKYSYNC_ACCOUNTS_FILE": str(path)}


def run(args: list[str], env: dict[str, str]) -> Result:
    result = CliRunner().invoke(cli, args, env=env)
    for secret in SECRETS:
        assert secret not in result.output, (args, result.output)
    return result


def erp_insert(url: str, account: str | None, kind: str, ref: str, payload: str) -> int:
    """A row as the ERP writes it: plain SQL, with or without the account column."""
    columns, values = "kind, ref, payload", f"'{kind}', '{ref}', '{payload}'"
    if account is not None:
        columns, values = f"account, {columns}", f"'{account}', {values}"
    with get_engine(url).begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO skysync_outbox ({columns}) VALUES ({values})")
        return int(conn.exec_driver_sql("SELECT max(id) FROM skysync_outbox").scalar_one())


def finish(url: str, row_id: int, state: str, reason: str | None = None) -> None:
    with get_engine(url).begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE skysync_outbox SET state = :state, reason = :reason, "
                "finished_at = CURRENT_TIMESTAMP WHERE id = :id"
            ),
            {"state": state, "reason": reason, "id": row_id},
        )


def two_accounts_rows(url: str) -> dict[str, list[int]]:
    """default: 2 pending, 1 sent; loja-sul: 1 pending, 1 dead, 1 sent."""
    ids = {
        "default": [
            erp_insert(url, None, "price", "SKU-1", '{"price": 10.5}'),
            erp_insert(url, "default", "stock", "SKU-1", '{"qty": 3}'),
            erp_insert(url, None, "stock", "SKU-2", '{"qty": 1}'),
        ],
        SUL: [
            erp_insert(url, SUL, "stock", "SKU-1", '{"qty": 7}'),
            erp_insert(url, SUL, "price", "SKU-1", '{"price": 99.0}'),
            erp_insert(url, SUL, "stock", "SKU-9", '{"qty": 2}'),
        ],
    }
    finish(url, ids["default"][2], "sent")
    finish(url, ids[SUL][1], "dead", "test: attempts used up")
    finish(url, ids[SUL][2], "sent")
    return ids


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


# -- status ------------------------------------------------------------------------------------


def test_status_of_one_account_and_of_every_account(db_url: str, env: dict[str, str]) -> None:
    two_accounts_rows(db_url)
    one = run(["status", "--json", "--account", SUL], env)
    assert one.exit_code == 0, one.output
    report = as_json(one)
    assert report["account"] == SUL
    assert (report["outbox"]["pending"], report["outbox"]["dead"]) == (1, 1)
    assert report["outbox"]["sent"] == 1
    assert list(report["accounts"]) == [SUL]
    assert report["accounts"][SUL]["credentials_refused"] is False

    every = as_json(run(["status", "--json"], env))
    assert every["account"] is None
    assert (every["outbox"]["pending"], every["outbox"]["sent"], every["outbox"]["dead"]) == (
        3,
        2,
        1,
    )
    assert list(every["accounts"]) == ["default", SUL]
    assert every["accounts"]["default"]["outbox"]["pending"] == 2
    assert every["accounts"][SUL]["outbox"]["dead"] == 1
    assert every["unconfigured_accounts"] == {}

    text = run(["status", "--account", SUL], env)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert f"account: {SUL} (only its rows and runs)" in lines
    assert "  pending     1" in lines
    assert f"  {SUL}: pending 1, sent 1, dead 1; last batch never" in lines, lines
    every_text = run(["status"], env).stdout.splitlines()
    assert "  default: pending 2, sent 1; last batch never" in every_text, every_text


def test_status_names_rows_of_an_account_that_is_not_configured(
    db_url: str, env: dict[str, str]
) -> None:
    row_id = erp_insert(db_url, "loja-norte", "stock", "SKU-1", '{"qty": 1}')
    finish(
        db_url,
        row_id,
        "rejected",
        'account: "loja-norte" is not a configured SkyHub account (configured: default)',
    )
    result = run(["status", "--json"], env)
    assert result.exit_code == 1, result.output
    report = as_json(result)
    assert report["unconfigured_accounts"] == {"loja-norte": 1}
    (problem,) = [p for p in report["problems"] if "loja-norte" in p]
    assert problem.startswith('1 row(s) name account "loja-norte", which was not configured')
    assert "--account loja-norte" in problem
    assert as_json(run(["status", "--json", "--account", SUL], env))["healthy"] is True


# -- lists ----------------------------------------------------------------------------------


def test_outbox_list_keeps_to_the_account_and_shows_it(db_url: str, env: dict[str, str]) -> None:
    ids = two_accounts_rows(db_url)
    listed = run(["outbox", "list", "--account", SUL, "--json"], env)
    assert listed.exit_code == 0, listed.output
    rows = as_json(listed)
    assert sorted(r["id"] for r in rows) == sorted(ids[SUL])
    assert {r["account"] for r in rows} == {SUL}

    text = run(["outbox", "list", "--account", SUL], env)
    assert text.exit_code == 0, text.output
    assert len(text.stdout.splitlines()) == 3
    assert all(line.split()[1] == SUL for line in text.stdout.splitlines()), text.stdout

    every = as_json(run(["outbox", "list", "--json"], env))
    assert {r["account"] for r in every} == {"default", SUL} and len(every) == 6
    dead = as_json(run(["outbox", "list", "--state", "dead", "--json"], env))
    assert [(r["id"], r["account"]) for r in dead] == [(ids[SUL][1], SUL)]


def test_requeue_and_enqueue_keep_to_the_account(db_url: str, env: dict[str, str]) -> None:
    ids = two_accounts_rows(db_url)
    finish(db_url, ids["default"][0], "dead", "test: attempts used up")
    done = run(["outbox", "requeue", "--state", "dead", "--account", SUL], env)
    assert done.exit_code == 0, done.output
    assert f"requeued 1 row(s) (account {SUL})" in done.stdout
    still = as_json(run(["outbox", "list", "--state", "dead", "--json"], env))
    assert [r["id"] for r in still] == [ids["default"][0]]

    written = run(["enqueue", "stock", "SKU-5", '{"qty": 4}', "--account", SUL], env)
    assert written.exit_code == 0, written.output
    assert f"(account {SUL})" in written.stdout
    sul_rows = as_json(run(["outbox", "list", "--ref", "SKU-5", "--json"], env))
    assert [r["account"] for r in sul_rows] == [SUL]
    shown = as_json(run(["item", "show", "SKU-1", "--account", SUL, "--json"], env))
    assert shown["account"] == SUL
    assert sorted(r["id"] for r in shown["recent_rows"]) == sorted(ids[SUL][:2])


# -- accounts list --------------------------------------------------------------------------


def test_accounts_list_shows_each_account_without_a_secret(
    db_url: str, env: dict[str, str]
) -> None:
    two_accounts_rows(db_url)
    result = run(["accounts", "list", "--json"], env)
    assert result.exit_code == 0, result.output
    overview = as_json(result)
    assert overview["source"] == f"SKYSYNC_ACCOUNTS_FILE={env['SKYSYNC_ACCOUNTS_FILE']}"
    default, sul = overview["accounts"]
    assert (default["name"], default["email"]) == ("default", None)
    assert (sul["name"], sul["email"]) == (SUL, SUL_EMAIL)
    assert (sul["outbox"]["pending"], sul["outbox"]["dead"], sul["outbox"]["sent"]) == (1, 1, 1)
    assert default["outbox"]["pending"] == 2
    assert sul["last_accepted_at"] is not None and sul["last_relay_at"] is None
    assert sul["stopped_on_credentials"] is False and sul["stop_reason"] is None
    assert "api_key" not in json.dumps(overview) and "account_key" not in json.dumps(overview)

    text = run(["accounts", "list"], env)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert f"{SUL} ({SUL_EMAIL})" in lines
    assert "  rows: pending 1, sent 1, dead 1" in lines, lines
    assert "  credentials: not refused" in lines


# -- an unknown --account ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["outbox", "list"],
        ["outbox", "requeue", "--state", "dead"],
        ["item", "show", "SKU-1"],
        ["orders", "list"],
        ["errors", "list"],
        ["enqueue", "stock", "SKU-1", '{"qty": 1}'],
        ["drain"],
        ["reconcile"],
    ],
    ids=lambda args: "-".join(a for a in args if not a.startswith("{")),
)
def test_an_unknown_account_exits_2_naming_it_and_the_configured_ones(
    db_url: str, env: dict[str, str], args: list[str]
) -> None:
    result = run([*args, "--account", "loja-norte"], env)
    assert result.exit_code == 2, result.output
    assert 'no SkyHub account "loja-norte" is configured' in result.stderr, result.stderr
    assert f"(configured: default, {SUL};" in result.stderr, result.stderr
    with get_engine(db_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM skysync_outbox").scalar_one() == 0


# -- one account's credentials refused, against the emulator ---------------------------------


def test_a_revoked_account_stops_alone_and_status_names_it(
    db_url: str, env: dict[str, str]
) -> None:
    """loja-sul's key is revoked on the emulator: `skysync drain` (every account) sends the
    default account's rows, stops loja-sul's and exits 1; status and accounts list name it."""
    config = sandbox_config(accounts=[SandboxAccount(SUL, SUL_EMAIL, SUL_KEY)])
    with Sandbox(config) as sb:
        env = {**env, "SKYSYNC_SKYHUB_URL": sb.base_url}
        mine = erp_insert(db_url, None, "product", "P-1", '{"name": "Caneca", "price": 10.0}')
        theirs = erp_insert(db_url, SUL, "product", "P-1", '{"name": "Copo", "price": 20.0}')
        stray = erp_insert(db_url, "loja-norte", "stock", "P-1", '{"qty": 1}')
        sb.revoke_account(SUL)
        drained = run(["drain"], env)
        assert sb.state()["products"]["P-1"]["name"] == "Caneca"
        assert sb.state(account=SUL)["products"] == {}
    assert drained.exit_code == 1, drained.output
    out = as_json(drained)
    assert out["rejected_unconfigured"] == 1
    assert out["accounts"]["default"]["outbox"]["sent"] == 1
    assert out["accounts"][SUL]["this_drain"]["stopped"] is True
    assert f"skysync: account {SUL}: stopped: SkyHub refused the credentials" in drained.stderr
    states = {r["id"]: r["state"] for r in as_json(run(["outbox", "list", "--json"], env))}
    assert states == {mine: "sent", theirs: "pending", stray: "rejected"}

    status = run(["status", "--json"], env)
    assert status.exit_code == 1, status.output
    report = as_json(status)
    assert report["accounts"][SUL]["credentials_refused"] is True
    assert report["accounts"]["default"]["credentials_refused"] is False
    refused = [p for p in report["problems"] if "credentials" in p]
    assert len(refused) == 1, report["problems"]
    assert refused[0].startswith(f"account {SUL}: the last relay batch stopped: SkyHub refused")
    assert "its rows wait" in refused[0]
    assert any('account "loja-norte"' in p for p in report["problems"]), report["problems"]
    # the default account alone is healthy
    assert run(["status", "--account", "default"], env).exit_code == 0

    text = run(["status"], env)
    assert f"  {SUL}: pending 1; last batch " in text.stdout, text.stdout
    assert "STOPPED: SkyHub refused its credentials, its rows wait" in text.stdout

    listed = {a["name"]: a for a in as_json(run(["accounts", "list", "--json"], env))["accounts"]}
    assert listed[SUL]["stopped_on_credentials"] is True
    assert "refused the credentials" in listed[SUL]["stop_reason"]
    assert listed["default"]["stopped_on_credentials"] is False
    assert listed["default"]["last_accepted_at"] is not None
    assert listed[SUL]["last_accepted_at"] is None
