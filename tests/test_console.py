"""The operator console without a browser: the app served by uvicorn (as `skysync console`
serves it) in a thread, an httpx client, on both databases; the SkyHub emulator over HTTP for
what the console asks SkyHub (a SKU read now, ignoring SkyHub's errors, a repair). The data
comes from console_helpers.seed (the real relay, mostly). The browser's side is
tests/test_console_browser.py. The seven tests marked slow (the other actions, keyset pages,
filters, secrets: about 14 s of the module's 26) stay out of `make test-fast`."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from console_helpers import (
    API_KEY,
    OPERATOR,
    SECRETS,
    VIEWER,
    Story,
    accounts_file,
    console_settings,
    many_dead,
    seed,
    served,
    with_password,
)
from relay_helpers import insert, requests, row

from skysync.config import ConfigError, load_settings
from skysync.console.app import NoUsers, create_app
from skysync.console.auth import TOKEN_LIFETIME, Csrf, User, Users
from skysync.domain.kinds import RowState
from skysync.domain.selection import RELEASABLE, REQUEUEABLE, RowSelection
from skysync.emulator import Sandbox
from skysync.entrypoints.cli import cli
from skysync.store.db import session_scope
from skysync.store.models import Order, OutboxRow, RunLog, SyncError, utcnow

PAGES = (
    "/",
    "/trouble",
    "/trouble?state=dead&kind=stock",
    "/sku",
    "/sku?sku=TACA-VINHO",
    "/sku?sku=NEVER-WRITTEN",
    "/orders",
    "/orders/Americanas-1001",
    "/reconcile",
    "/static/console.css",
)
ACTIONS = ("/trouble/requeue", "/trouble/release", "/errors/ignore", "/reconcile/repair")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def story(db_url: str, sb: Sandbox) -> Story:
    return seed(db_url, sb)


@pytest.fixture
def app(db_url: str, sb: Sandbox, tmp_path: Path) -> Any:
    return create_app(console_settings(db_url, sb.base_url, accounts=accounts_file(tmp_path)))


@pytest.fixture
def client(app: Any) -> Iterator[httpx.Client]:
    with served(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        yield http


def token(client: httpx.Client, user: tuple[str, str], page: str = "/trouble") -> str:
    """The CSRF token ``user``'s page holds."""
    found = CSRF.search(client.get(page, auth=user).text)
    assert found is not None
    return found[1]


def post(client: httpx.Client, path: str, user: tuple[str, str], data: dict[str, Any]) -> Any:
    return client.post(path, data={"csrf": token(client, user), **data}, auth=user)


def confirm(client: httpx.Client, path: str, data: dict[str, Any]) -> tuple[str, Any]:
    """An operator's action, both steps: the confirmation page's text, then the answer to
    its confirm button (the fields the page carries, as a browser sends them)."""
    shown = post(client, path, OPERATOR, data)
    assert shown.status_code == 200, shown.text
    return shown.text, press_confirm(client, path, shown.text)


def press_confirm(client: httpx.Client, path: str, shown: str) -> Any:
    """The confirmation page's button: its form's fields, sent as a browser sends them."""
    form = shown[shown.index('<form method="post"') :]
    fields = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form)
    return client.post(path, data=_multi(fields), auth=OPERATOR)


def _multi(fields: list[tuple[str, str]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, value in fields:
        value = value.replace("&amp;", "&").replace("&#34;", '"').replace("&#39;", "'")
        if name in found:
            found[name] = [
                *(found[name] if isinstance(found[name], list) else [found[name]]),
                value,
            ]
        else:
            found[name] = value
    return found


def states(db_url: str) -> dict[int, str]:
    with session_scope(db_url) as session:
        return dict(session.execute(sa.select(OutboxRow.id, OutboxRow.state)).all())  # type: ignore[arg-type]


def actions_logged(db_url: str) -> list[RunLog]:
    with session_scope(db_url) as session:
        query = sa.select(RunLog).where(RunLog.kind == "console_action").order_by(RunLog.id)
        return list(session.scalars(query))


def open_errors(db_url: str) -> list[int]:
    with session_scope(db_url) as session:
        query = sa.select(SyncError.id).where(SyncError.ignored_at.is_(None))
        return sorted(session.scalars(query))


# -- the pages -------------------------------------------------------------------------------


def test_every_page_renders_with_data(client: httpx.Client, story: Story) -> None:
    pages = {path: client.get(path, auth=OPERATOR) for path in PAGES}
    for path, page in pages.items():
        assert page.status_code == 200, (path, page.text[:500])

    overview = pages["/"].text
    assert "Unhealthy" in overview
    assert "held by the price drop guard wait for an operator" in overview  # status's problem
    assert 'id="states"' in overview and "state-held" in overview
    assert "<svg" in overview and "Rows of account default SkyHub accepted per minute" in overview
    assert "Relay batches" in overview and " claimed, " in overview and "accepted" in overview
    assert "Reconciliations" in overview and "1 drift" in overview
    assert "Order pulls" in overview and "1 received" in overview
    assert "loja-sul" in overview  # several accounts: the picker and every account's line

    trouble = pages["/trouble"].text
    for row_id in (story.held, story.rejected, *story.dead, story.withheld):
        assert f'id="row-{row_id}"' in trouble
    assert "price: must be" in trouble  # the rejected row's reason
    assert "90% below" in trouble  # the held row's reason
    assert '<strong id="total">6</strong> rows match' in trouble
    assert "Marketplace recusou: ean_null" in trouble  # SkyHub's own errors
    filtered = pages["/trouble?state=dead&kind=stock"].text
    assert all(f'id="row-{i}"' in filtered for i in story.dead)
    assert f'id="row-{story.held}"' not in filtered

    sku = pages["/sku?sku=TACA-VINHO"].text
    assert "In SkyHub" in sku and "Not frozen" in sku
    assert 'id="acknowledged"' in sku and "100.0" in sku
    assert 'id="drift"' in sku and "120.0" in sku  # the last reconciliation's drift
    assert "Marketplace recusou: ean_null" in sku
    assert "price: must be" in sku  # its rejected row among its last rows
    assert "has not delivered anything for NEVER-WRITTEN" in pages["/sku?sku=NEVER-WRITTEN"].text

    orders = pages["/orders"].text
    assert "Americanas-1001" in orders and "payment_received" in orders
    assert 'id="late-orders"' in orders
    order = pages["/orders/Americanas-1001"].text
    assert 'id="inbox"' in order and "payment_received" in order
    assert "order_invoice" in order and "sent" in order

    reconcile = pages["/reconcile"].text
    assert "TACA-VINHO" in reconcile and "120.0" in reconcile
    assert 'id="repair"' in reconcile

    assert pages["/static/console.css"].headers["content-type"].startswith("text/css")
    assert client.get("/orders/NO-SUCH-ORDER", auth=OPERATOR).status_code == 404


def test_the_orders_page_lists_what_is_late(
    client: httpx.Client, db_url: str, story: Story
) -> None:
    """What `skysync orders late` lists: an order past its expedition limit, an approved one not
    invoiced in time, an inbox row the ERP has not consumed (the thresholds: SKYSYNC_LATE_*)."""
    before = client.get("/orders", auth=VIEWER).text
    assert "LATE TO SHIP" not in before
    with session_scope(db_url) as session:
        session.execute(
            sa.update(Order)
            .where(Order.code == "Americanas-1001")
            .values(expedition_limit_at=utcnow() - timedelta(hours=3))
        )
    page = client.get("/orders", auth=VIEWER)
    assert page.status_code == 200
    late = page.text.split('id="late-orders"', 1)[1].split("</table>", 1)[0]
    assert "LATE TO SHIP" in late and "Americanas-1001" in late
    assert "passed 3 h" in late  # how late, as the command line says it
    assert "to ship (1 past the expedition limit" in page.text


def test_pages_carry_security_headers(client: httpx.Client, story: Story) -> None:
    page = client.get("/", auth=VIEWER)
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "script-src" not in page.headers["content-security-policy"]  # none at all
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert "<script" not in page.text


def test_bad_input_is_a_400_that_names_the_parameter(client: httpx.Client, story: Story) -> None:
    for path, says in (
        ("/trouble?state=sent", "state: one of rejected, dead, held, withheld"),
        ("/trouble?kind=coffee", "kind: one of product"),
        ("/trouble?before=abc", "before: must be a row id"),
        ("/trouble?since=yesterday", "since: must be a date and time"),
        ("/?account=loja-norte", 'no SkyHub account "loja-norte" is configured'),
    ):
        page = client.get(path, auth=OPERATOR)
        assert page.status_code == 400, path
        assert says in html.unescape(page.text), (path, page.text)


def test_a_selection_says_what_it_holds_and_what_an_action_may_take() -> None:
    chosen = RowSelection(account="default", states=(RowState.DEAD,), kind="stock", ref="S-1")
    assert chosen.describe() == "account default, state dead, kind stock, ref S-1"
    assert chosen.for_action(RELEASABLE) is None  # release never takes a dead row
    every = RowSelection(account="loja-sul")
    taken = every.for_action(REQUEUEABLE)
    assert taken is not None and set(taken.states) == set(REQUEUEABLE)
    assert every.up_to(None).upto == 0  # nothing was counted: nothing is touched
    assert "rows 1, 2" in RowSelection(account="default", ids=(1, 2)).describe()
    with pytest.raises(ValueError, match="states must be some of"):
        RowSelection(account="default", states=(RowState.SENT,))


def test_unknown_routes_and_methods(client: httpx.Client) -> None:
    assert client.get("/nowhere", auth=VIEWER).status_code == 404
    assert post(client, "/trouble/delete", OPERATOR, {}).status_code == 404
    assert client.get("/trouble/requeue", auth=OPERATOR).status_code == 405


# -- authentication, roles, CSRF -------------------------------------------------------------


def test_every_route_needs_credentials(client: httpx.Client) -> None:
    wrong = (None, ("otto", "wrong"), ("nobody", OPERATOR[1]), (OPERATOR[0], VIEWER[1]))
    for path in (*PAGES, "/no-such-page", "/static/missing.css"):
        for auth in wrong:
            page = client.get(path, auth=auth)
            assert page.status_code == 401, (path, auth)
            assert page.headers["www-authenticate"].startswith('Basic realm="skysync console"')
    for path in (*ACTIONS, "/sku/read"):
        assert client.post(path, data={"sku": "X"}).status_code == 401
        assert client.post(path, data={"sku": "X"}, auth=("otto", "nope")).status_code == 401
    for header in ("Bearer abc", "Basic !!!", "Basic b3R0bw=="):  # bad base64, no ":"
        assert client.get("/", headers={"Authorization": header}).status_code == 401


def test_a_viewer_sees_everything_and_changes_nothing(
    client: httpx.Client, db_url: str, story: Story
) -> None:
    for path in PAGES:
        assert client.get(path, auth=VIEWER).status_code == 200, path
    trouble = client.get("/trouble", auth=VIEWER).text
    assert "read-only: actions are for operators" in trouble
    assert 'formaction="/trouble/requeue"' not in trouble
    before = (states(db_url), open_errors(db_url))
    forms = {
        "/trouble/requeue": {"state": "dead"},
        "/trouble/release": {"row": str(story.held)},
        "/errors/ignore": {"error_row": str(story.error_ids[0])},
        "/reconcile/repair": {},
    }
    for path, data in forms.items():
        for step in ({}, {"confirm": "yes", "upto": "999999", "ids": story.error_ids[0]}):
            refused = post(client, path, VIEWER, {**data, **step})
            assert refused.status_code == 403, (path, step)
            assert "read-only user (SKYSYNC_CONSOLE_VIEWERS)" in refused.text
    assert (states(db_url), open_errors(db_url)) == before
    assert actions_logged(db_url) == []


def test_a_post_without_its_csrf_token_is_refused(
    app: Any, client: httpx.Client, db_url: str, sb: Sandbox, story: Story
) -> None:
    console = app.state.console
    viewers_token = token(client, VIEWER)
    stale = Csrf(console.users.csrf_key(), clock=lambda: 1_000_000.0).token(
        User("otto", "operator")
    )  # type: ignore[arg-type]
    forged = "1765000000." + "0" * 64
    before = (states(db_url), open_errors(db_url), len(requests(sb)))
    for path in (*ACTIONS, "/sku/read"):
        for csrf in (None, "", "garbage", forged, viewers_token, stale):
            data: dict[str, Any] = {"state": "dead", "confirm": "yes", "upto": "999999",
                                    "sku": "TACA-VINHO", "ids": story.error_ids[0]}  # fmt: skip
            if csrf is not None:
                data["csrf"] = csrf
            refused = client.post(path, data=data, auth=OPERATOR)
            assert refused.status_code == 403, (path, csrf)
            assert "security token is missing, expired or not yours" in refused.text
    # nothing changed, nothing recorded, no request to SkyHub (not even the read)
    assert (states(db_url), open_errors(db_url), len(requests(sb))) == before
    assert actions_logged(db_url) == []


def test_tokens_are_bound_to_their_user_and_expire() -> None:
    users = Users.from_settings(
        load_settings(console_viewers="vera:pw-vera-1", console_operators="otto:pw-otto-1")
    )
    now = [2_000_000.0]
    csrf = Csrf(users.csrf_key(), clock=lambda: now[0])
    otto, vera = User("otto", "operator"), User("vera", "viewer")  # type: ignore[arg-type]
    issued = csrf.token(otto)
    assert csrf.valid(otto, issued)
    assert not csrf.valid(vera, issued)
    now[0] += TOKEN_LIFETIME + 1
    assert not csrf.valid(otto, issued)
    other = Csrf(Users.from_settings(load_settings(console_operators="otto:another-pw")).csrf_key())
    assert not other.valid(otto, csrf.token(otto))  # another password, another key


# -- the actions -----------------------------------------------------------------------------


def test_requeue_by_filter_confirms_the_count_then_requeues_and_records_who(
    client: httpx.Client, db_url: str, story: Story
) -> None:
    shown = post(
        client, "/trouble/requeue", OPERATOR, {"state": "dead", "back": "/trouble?state=dead"}
    ).text
    assert "This will requeue <strong" in shown
    assert '<strong class="count">3</strong>' in shown
    assert "state dead" in shown
    assert actions_logged(db_url) == [] and all(states(db_url)[i] == "dead" for i in story.dead)
    # a row that dies while the operator reads the confirmation is not requeued with them
    late = insert(db_url, "stock", "SKU-LATE", {"qty": 1})
    with session_scope(db_url) as session:
        session.execute(
            sa.update(OutboxRow).where(OutboxRow.id == late).values(state="dead", reason="503")
        )
    answer = press_confirm(client, "/trouble/requeue", shown)
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith("/trouble?state=dead&done=")
    after = states(db_url)
    assert all(after[i] == "pending" for i in story.dead)
    assert after[late] == "dead"
    assert after[story.held] == "held" and after[story.rejected] == "rejected"
    for i in story.dead:
        assert row(db_url, i).attempts == 0
        assert row(db_url, i).reason == "requeued by an operator"
    [logged] = actions_logged(db_url)
    assert logged.account == "default"
    assert logged.summary["user"] == "otto" and logged.summary["role"] == "operator"
    assert logged.summary["action"] == "requeue" and logged.summary["count"] == 3
    assert logged.summary["selection"]["states"] == ["dead"]
    assert logged.summary["selection"]["upto"] == max(story.dead)
    flash = client.get(location, auth=OPERATOR).text
    assert "requeued 3 rows" in flash and "otto" in flash


@pytest.mark.slow
def test_requeue_checked_rows_and_release_a_held_row(
    client: httpx.Client, db_url: str, story: Story
) -> None:
    chosen = [story.dead[0], story.rejected, story.held]  # the held one is not requeueable
    shown, answer = confirm(
        client, "/trouble/requeue", {"scope": "checked", "id": [str(i) for i in chosen]}
    )
    assert '<strong class="count">2</strong>' in shown
    assert answer.status_code == 303
    after = states(db_url)
    assert after[story.dead[0]] == after[story.rejected] == "pending"
    assert after[story.dead[1]] == "dead" and after[story.held] == "held"

    shown, answer = confirm(client, "/trouble/release", {"row": str(story.held)})
    assert "Release 1 row" in shown and '<strong class="count">1</strong>' in shown
    assert answer.status_code == 303
    released = row(db_url, story.held)
    assert released.state == "pending"
    assert released.reason == "released by an operator: the price guard lets it through"
    logged = actions_logged(db_url)
    assert [(r.summary["action"], r.summary["count"]) for r in logged] == [
        ("requeue", 2),
        ("release", 1),
    ]
    assert logged[1].summary["selection"]["ids"] == [story.held]

    # nothing held any more: the confirmation says so and offers no button
    shown = post(client, "/trouble/release", OPERATOR, {"state": "held"}).text
    assert "Nothing to release" in shown and 'id="confirm"' not in shown


@pytest.mark.slow
def test_ignore_asks_skyhub_and_marks_the_error_ignored(
    client: httpx.Client, db_url: str, sb: Sandbox, story: Story
) -> None:
    first = story.error_ids[0]
    shown, answer = confirm(client, "/errors/ignore", {"error_row": str(first)})
    assert "Ignore 1 SkyHub error" in shown
    assert answer.status_code == 303
    assert open_errors(db_url) == story.error_ids[1:]
    assert len(sb.state()["sync_errors"]["products"]) == 1  # SkyHub stopped listing it
    assert [e["method"] for e in requests(sb, "PATCH")] == ["PATCH"]
    [logged] = actions_logged(db_url)
    assert logged.summary["action"] == "ignore" and logged.summary["ids"] == [first]
    assert logged.summary["user"] == "otto"

    shown, answer = confirm(client, "/errors/ignore", {"scope": "filter"})  # the rest
    assert "Ignore 1 SkyHub error" in shown
    assert answer.status_code == 303
    assert open_errors(db_url) == []


@pytest.mark.slow
def test_repair_reconciles_with_repair_and_records_it(
    client: httpx.Client, db_url: str, sb: Sandbox, story: Story
) -> None:
    shown, answer = confirm(client, "/reconcile/repair", {})
    assert "1 drifted field" in shown
    assert answer.status_code == 303
    with session_scope(db_url) as session:
        corrections = session.scalars(
            sa.select(OutboxRow).where(OutboxRow.origin == "reconcile")
        ).all()
        assert [(r.ref, r.payload) for r in corrections] == [("TACA-VINHO", {"price": 100.0})]
        last = session.scalars(
            sa.select(RunLog).where(RunLog.kind == "reconcile").order_by(RunLog.id.desc())
        ).first()
        assert last is not None and last.summary["repair"] is True
    [logged] = actions_logged(db_url)
    assert logged.summary["action"] == "repair" and logged.summary["count"] == 1
    assert "enqueued 1 correction row" in client.get(answer.headers["location"], auth=OPERATOR).text


@pytest.mark.slow
def test_read_from_skyhub_shows_it_beside_the_erp(
    client: httpx.Client, db_url: str, sb: Sandbox, story: Story
) -> None:
    before = len(requests(sb))
    page = post(client, "/sku/read", VIEWER, {"sku": "TACA-VINHO"})  # a viewer may: it reads
    assert page.status_code == 200
    assert 'id="compare"' in page.text
    compare = page.text[page.text.index('id="compare"') :]
    price = compare[compare.index(">price<") :].split("</tr>")[0]
    assert "100.0" in price and "120.0" in price and "DRIFT" in price
    log = requests(sb)[before:]
    assert [(e["method"], e["path"]) for e in log] == [("GET", "/products/TACA-VINHO")]
    assert actions_logged(db_url) == []  # it changed nothing
    missing = post(client, "/sku/read", OPERATOR, {"sku": "NOT-IN-SKYHUB"})
    assert "SkyHub does not have NOT-IN-SKYHUB" in missing.text


# -- keyset pages and filters ----------------------------------------------------------------


def _ids(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'id="row-(\d+)"', page)]


def _link(page: str, name: str) -> str | None:
    found = re.search(rf'<a href="([^"]+)" id="{name}">', page)
    return found[1].replace("&amp;", "&") if found else None


@pytest.mark.slow
def test_keyset_pages_show_each_row_once(client: httpx.Client, db_url: str, story: Story) -> None:
    bulk = many_dead(db_url, 130)
    everything = sorted({*bulk, *story.dead, story.held, story.rejected, story.withheld})
    seen: list[int] = []
    path: str | None = "/trouble"
    pages = 0
    while path is not None:
        page = client.get(path, auth=VIEWER).text
        ids = _ids(page)
        assert ids == sorted(ids, reverse=True)
        assert len(ids) <= 50
        seen += ids
        pages += 1
        path = _link(page, "older")
    assert pages == 3
    assert sorted(seen) == everything and len(seen) == len(set(seen))
    assert "before=" in (_link(client.get("/trouble", auth=VIEWER).text, "older") or "")
    # and back again, newer pages by `after`
    last = client.get(f"/trouble?before={min(everything) + 1}", auth=VIEWER).text
    assert _ids(last) == [min(everything)]
    back: list[int] = []
    path = _link(last, "newer")
    while path is not None:
        page = client.get(path, auth=VIEWER).text
        back += _ids(page)
        path = _link(page, "newer")
    assert sorted(back) == everything[1:] and len(back) == len(set(back))


@pytest.mark.slow
def test_filters_by_state_kind_ref_time_and_account(
    client: httpx.Client, db_url: str, story: Story
) -> None:
    sul = many_dead(db_url, 2, account="loja-sul")
    page = lambda query: _ids(client.get(f"/trouble?{query}", auth=VIEWER).text)  # noqa: E731
    assert page("state=held") == [story.held]
    assert page("state=rejected&kind=price") == [story.rejected]
    assert page("kind=product") == [story.withheld]
    assert page("ref=TACA-VINHO") == [story.rejected]
    assert sorted(page("state=dead")) == sorted(story.dead)
    assert sorted(page("account=loja-sul")) == sorted(sul)
    assert not set(sul) & set(page(""))
    with session_scope(db_url) as session:
        session.execute(
            sa.update(OutboxRow)
            .where(OutboxRow.id == story.dead[0])
            .values(finished_at=utcnow() - timedelta(days=2))
        )
    since = (utcnow() - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    assert sorted(page(f"state=dead&since={since}")) == sorted(story.dead[1:])
    assert page(f"state=dead&until={since}") == [story.dead[0]]


# -- secrets and settings --------------------------------------------------------------------


@pytest.mark.slow
def test_no_secret_on_any_page(db_url: str, sb: Sandbox, tmp_path: Path) -> None:
    seed(db_url, sb)
    url = with_password(db_url)
    settings = console_settings(url, sb.base_url, accounts=accounts_file(tmp_path))
    with served(create_app(settings)) as base, httpx.Client(base_url=base, timeout=60) as client:
        shown = [client.get(path, auth=OPERATOR) for path in PAGES]
        shown += [client.get(f"{path}?account=loja-sul", auth=VIEWER) for path in PAGES[:3]]
        shown += [client.get(path, auth=OPERATOR) for path in ("/trouble?kind=x", "/missing")]
        shown += [post(client, path, OPERATOR, {"state": "dead"}) for path in ACTIONS]
        shown += [post(client, "/trouble/requeue", VIEWER, {"state": "dead"})]
        shown += [post(client, "/sku/read", OPERATOR, {"sku": "TACA-VINHO"})]
        shown += [client.get("/", auth=("otto", "nope"))]
        _, done = confirm(client, "/trouble/requeue", {"state": "dead"})
        shown.append(done)
    assert len(shown) == 23
    for answer in shown:
        text = answer.text + " ".join(f"{k}: {v}" for k, v in answer.headers.items())
        for secret in SECRETS:
            assert secret not in text, (answer.url, secret)
    assert API_KEY not in str(settings.masked())


def test_a_database_without_tables_is_a_503_that_says_so(sb: Sandbox, tmp_path: Path) -> None:
    settings = console_settings(f"sqlite:///{tmp_path / 'empty.db'}", sb.base_url)
    with served(create_app(settings)) as base:
        page = httpx.get(f"{base}/", auth=VIEWER, timeout=30)
    assert page.status_code == 503
    assert "run `skysync migrate` first" in page.text


def test_settings_name_the_variable_and_never_the_secret() -> None:
    for values, says in (
        ({"console_viewers": "vera"}, "SKYSYNC_CONSOLE_VIEWERS: Value error, entry 1 must be"),
        ({"console_operators": "otto:pw1,:pw2"}, "SKYSYNC_CONSOLE_OPERATORS: Value error, entry 2"),
        ({"console_operators": "o tto:pw1"}, "entry 1: the user name must be"),
        ({"console_operators": "otto:pw1,otto:pw2"}, 'the user "otto" is listed twice'),
        (
            {"console_viewers": "otto:pw1", "console_operators": "otto:pw2"},
            "SKYSYNC_CONSOLE_VIEWERS and SKYSYNC_CONSOLE_OPERATORS",
        ),
        (
            {"console_operators": "otto:CHANGE_ME"},
            "SKYSYNC_CONSOLE_OPERATORS: is still a placeholder",
        ),
    ):
        with pytest.raises(ConfigError) as caught:
            load_settings(**values)
        assert says in str(caught.value), str(caught.value)
        for value in values.values():
            for part in value.split(","):
                if ":" in part:
                    assert part.split(":", 1)[1] not in str(caught.value)
    emulated = load_settings(skyhub_url="http://127.0.0.1:8710", console_operators="o:CHANGE_ME")
    assert emulated.console_users("console_operators") == [("o", "CHANGE_ME")]
    good = load_settings(console_viewers=" vera:pw-1:x , rui:pw-2 ,", console_operators="otto:p-3")
    assert good.console_users("console_viewers") == [("vera", "pw-1:x"), ("rui", "pw-2")]
    assert good.masked()["console_viewers"] == "**********"
    assert "pw-1:x" in good.secret_values()


def test_console_refuses_to_start_without_users(clean_env: Path, sqlite_url: str) -> None:
    with pytest.raises(NoUsers):
        create_app(load_settings(database_url=sqlite_url))
    refused = CliRunner().invoke(cli, ["console"], env={"SKYSYNC_DATABASE_URL": sqlite_url})
    assert refused.exit_code == 2
    assert "refusing to start the console" in refused.stderr
    assert "SKYSYNC_CONSOLE_OPERATORS" in refused.stderr
    shown = CliRunner().invoke(cli, ["console", "--help"])
    assert "--host" in shown.stdout and "8720" in shown.stdout
