"""The SkyHub emulator serves several accounts, as SkyHub does (issue #21, emulator part).

Each seller's credentials see their own catalogue, order queue, sync errors, request log, rate
limits and scripted faults; a request whose X-User-Email no account carries goes to
``default``, which behaves as the single-account emulator always did. Everything is checked
over real HTTP, as a client sees it.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from conftest import SandboxAdmin, free_port, wait_for_sandbox

from skysync.emulator import (
    AccountExistsError,
    Sandbox,
    SandboxAccount,
    SandboxConfig,
    UnknownAccountError,
)
from skysync.entrypoints.cli import cli

ACCOUNT_KEY = "acct-shared-456"
KEY_A = "key-a-secret-111"
KEY_B = "key-b-secret-222"
CREDS_A = {
    "X-User-Email": "a@loja.example",
    "X-Api-Key": KEY_A,
    "X-Accountmanager-Key": ACCOUNT_KEY,
}
CREDS_B = {
    "X-User-Email": "b@loja.example",
    "X-Api-Key": KEY_B,
    "X-Accountmanager-Key": ACCOUNT_KEY,
}
CREDS_DEFAULT = {
    "X-User-Email": "anyone@example.com",
    "X-Api-Key": "any-key",
    "X-Accountmanager-Key": ACCOUNT_KEY,
}
ACCOUNTS = [
    SandboxAccount("a", "a@loja.example", KEY_A),
    SandboxAccount("b", "b@loja.example", KEY_B),
]
_TLS = ssl.create_default_context()


def _client(sb: Sandbox, headers: dict[str, str]) -> httpx.Client:
    return httpx.Client(base_url=sb.base_url, headers=headers, timeout=5.0, verify=_TLS)


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    """Accounts a and b from the config; no rate limits, products linked only when told."""
    config = SandboxConfig(accounts=ACCOUNTS, rate_limits_enabled=False, link_delay=None, seed=3)
    with Sandbox(config) as sandbox:
        yield sandbox


@pytest.fixture
def admin(sb: Sandbox) -> SandboxAdmin:
    return SandboxAdmin(sb.base_url)


@pytest.fixture
def a(sb: Sandbox) -> Iterator[httpx.Client]:
    with _client(sb, CREDS_A) as c:
        yield c


@pytest.fixture
def b(sb: Sandbox) -> Iterator[httpx.Client]:
    with _client(sb, CREDS_B) as c:
        yield c


def _create(client: httpx.Client, sku: str, price: float) -> httpx.Response:
    product = {"sku": sku, "name": f"Produto {sku}", "price": price, "qty": 5}
    return client.post("/products", json={"product": product})


# --------------------------------------------------------------------------- separate worlds


def test_the_same_sku_holds_different_values_on_two_accounts(
    sb: Sandbox, a: httpx.Client, b: httpx.Client
) -> None:
    assert _create(a, "SKU-1", 10.0).status_code == 201
    assert _create(b, "SKU-1", 99.0).status_code == 201  # not a duplicate: another account
    assert a.put("/products/SKU-1", json={"product": {"qty": 7}}).status_code == 204
    assert a.get("/products/SKU-1").json()["price"] == 10.0
    assert (a.get("/products/SKU-1").json()["qty"], b.get("/products/SKU-1").json()["qty"]) == (
        7,
        5,
    )
    assert b.get("/products/SKU-1").json()["price"] == 99.0
    assert sb.state(account="a")["products"]["SKU-1"]["price"] == 10.0
    assert sb.state(account="b")["products"]["SKU-1"]["price"] == 99.0
    assert sb.state()["products"] == {}  # default saw nothing
    assert b.delete("/products/SKU-1").status_code == 204
    assert a.get("/products/SKU-1").status_code == 200


def test_orders_queued_on_one_account_are_seen_only_with_its_credentials(
    sb: Sandbox, admin: SandboxAdmin, a: httpx.Client, b: httpx.Client
) -> None:
    seeded = admin.seed_order({"code": "Americanas-1-01"}, account="a")
    assert seeded.status_code == 201, seeded.text
    with _client(sb, CREDS_DEFAULT) as anyone:
        assert anyone.get("/queues/orders").status_code == 204
        assert anyone.get("/orders/Americanas-1-01").status_code == 404
    assert b.get("/queues/orders").status_code == 204
    assert b.get("/orders/Americanas-1-01").status_code == 404
    delivered = a.get("/queues/orders")
    assert delivered.status_code == 200
    assert delivered.json()["code"] == "Americanas-1-01"
    assert b.delete("/queues/orders/Americanas-1-01").status_code == 404
    assert a.delete("/queues/orders/Americanas-1-01").status_code == 204
    assert admin.state(account="a")["orders"].keys() == {"Americanas-1-01"}
    assert admin.state(account="b")["orders"] == {}


def test_each_account_has_its_own_rate_limit_buckets() -> None:
    config = SandboxConfig(rate_limit=2, accounts=ACCOUNTS)
    with Sandbox(config) as sandbox, _client(sandbox, CREDS_A) as a, _client(sandbox, CREDS_B) as b:
        first_a = [a.get("/products").status_code for _ in range(3)]
        then_b = [b.get("/products").status_code for _ in range(2)]
        with _client(sandbox, CREDS_DEFAULT) as anyone:
            then_default = [anyone.get("/products").status_code for _ in range(2)]
    assert first_a == [200, 200, 429]
    assert then_b == [200, 200]  # A's full bucket is none of B's business
    assert then_default == [200, 200]
    assert sandbox.request_counts(account="a") == {
        "GET /products 200": 2,
        "GET /products 429": 1,
    }
    assert sandbox.request_counts(account="b") == {"GET /products 200": 2}


def test_scripted_faults_and_sync_errors_belong_to_one_account(
    sb: Sandbox, admin: SandboxAdmin, a: httpx.Client, b: httpx.Client
) -> None:
    fault = {"method": "GET", "path_prefix": "/products", "fault": "503", "count": 1}
    assert admin.call("POST", "faults", fault, account="b").status_code == 204
    assert a.get("/products").status_code == 200
    assert b.get("/products").status_code == 503
    error = {
        "entity_type": "products",
        "entity_id": "SKU-9",
        "error_category_code": "catalog",
        "error_code": "ean_null",
        "message": "EAN ausente",
    }
    assert admin.call("POST", "sync_errors", error, account="a").status_code == 201
    assert a.get("/sync_errors/products").json()["error_qty"] == 1
    assert b.get("/sync_errors/products").json()["error_qty"] == 0


# --------------------------------------------------------------------------- credentials


def test_a_wrong_key_for_a_registered_account_is_the_401_skyhub_gives(sb: Sandbox) -> None:
    with _client(sb, {**CREDS_A, "X-Api-Key": KEY_B}) as wrong:
        refused = wrong.get("/products")
    configured = SandboxConfig(email="ops@x", api_key="right", account_key=ACCOUNT_KEY)
    single_creds = {**CREDS_DEFAULT, "X-User-Email": "ops@x"}
    with Sandbox(configured) as single, _client(single, single_creds) as c:
        single_refused = c.get("/products")
    assert refused.status_code == single_refused.status_code == 401
    assert refused.json() == single_refused.json()
    assert KEY_B not in refused.text and KEY_A not in refused.text
    assert sb.request_counts(account="a") == {"GET /products 401": 1}


def test_unregistered_emails_reach_default_as_before(sb: Sandbox, a: httpx.Client) -> None:
    with _client(sb, CREDS_DEFAULT) as anyone:
        assert _create(anyone, "D-1", 5.0).status_code == 201
    assert sb.state()["products"].keys() == {"D-1"}
    assert a.get("/products/D-1").status_code == 404


def test_the_configured_account_key_is_required_of_every_account() -> None:
    config = SandboxConfig(account_key=ACCOUNT_KEY, accounts=ACCOUNTS)
    with Sandbox(config) as sandbox:
        with _client(sandbox, {**CREDS_A, "X-Accountmanager-Key": "other"}) as c:
            refused = c.get("/products")
        with _client(sandbox, CREDS_A) as c:
            accepted = c.get("/products")
    assert (refused.status_code, accepted.status_code) == (401, 200)
    assert "X-Accountmanager-Key" in refused.json()["error"]


def test_a_revoked_key_stops_only_its_account(
    sb: Sandbox, admin: SandboxAdmin, a: httpx.Client, b: httpx.Client
) -> None:
    assert admin.revoke("a").status_code == 204
    refused = a.get("/products")
    assert refused.status_code == 401
    assert refused.json() == {"error": "Header X-Api-Key inválido (invalid credential)"}
    assert b.get("/products").status_code == 200
    with _client(sb, CREDS_DEFAULT) as anyone:
        assert anyone.get("/products").status_code == 200
    assert {x["name"]: x["revoked"] for x in admin.accounts()} == {
        "default": False,
        "a": True,
        "b": False,
    }
    assert admin.restore("a").status_code == 204
    assert a.get("/products").status_code == 200
    assert admin.revoke("nobody").status_code == 404


# --------------------------------------------------------------------------- the admin API


def test_admin_calls_act_on_the_account_named(
    sb: Sandbox, admin: SandboxAdmin, a: httpx.Client, b: httpx.Client
) -> None:
    seeded = admin.call(
        "POST", "products", {"products": [{"sku": "P-1", "price": 3.0}]}, account="b"
    )
    assert seeded.status_code == 201
    assert admin.call("POST", "products/P-1/link", account="b").status_code == 204
    assert admin.call("POST", "products/P-1/link", account="a").status_code == 404
    assert admin.call("PATCH", "products/P-1", {"price": 4.0}, account="b").status_code == 204
    assert b.get("/products/P-1").json()["price"] == 4.0
    assert a.get("/products/P-1").status_code == 404
    requests = admin.call("GET", "requests", account="a").json()
    assert requests["counts"] == {"GET /products/{sku} 404": 1}
    assert [e["path"] for e in requests["log"]] == ["/products/P-1"]
    assert admin.call("DELETE", "products/P-1", account="b").status_code == 204
    assert admin.state(account="b")["products"] == {}
    # ?account=default is what no ?account= means
    assert admin.state(account="default") == admin.call("GET", "state").json()


def test_unknown_account_is_404_naming_it(admin: SandboxAdmin) -> None:
    for method, path in (
        ("GET", "state"),
        ("GET", "requests"),
        ("POST", "reset"),
        ("GET", "config"),
        ("POST", "orders"),
    ):
        answer = admin.call(method, path, {"code": "X-1"}, account="ghost")
        assert answer.status_code == 404, (method, path)
        assert "ghost" in answer.json()["error"]
    assert "ghost" in admin.restore("ghost").json()["error"]


def test_accounts_are_created_and_listed_without_their_keys(
    sb: Sandbox, admin: SandboxAdmin
) -> None:
    made = admin.add_account("c", "c@loja.example", "key-c-secret-333")
    assert made.status_code == 201
    assert made.json() == {"name": "c", "email": "c@loja.example", "revoked": False}
    assert [(x["name"], x["email"]) for x in admin.accounts()] == [
        ("default", None),
        ("a", "a@loja.example"),
        ("b", "b@loja.example"),
        ("c", "c@loja.example"),
    ]
    creds_c = {**CREDS_A, "X-User-Email": "c@loja.example", "X-Api-Key": "key-c-secret-333"}
    with _client(sb, creds_c) as c:
        assert _create(c, "C-1", 1.0).status_code == 201
    assert admin.state(account="c")["products"].keys() == {"C-1"}
    shown = " ".join(
        admin.call("GET", path, account=name).text
        for path in ("accounts", "config", "state", "requests")
        for name in ("default", "a", "c")
    )
    shown += repr(sb.accounts()) + repr(sb.config) + repr(ACCOUNTS)
    for key in (KEY_A, KEY_B, "key-c-secret-333"):
        assert key not in shown


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "x@y", "api_key": "k"}, "name"),
        ({"name": "bad name", "email": "x@y", "api_key": "k"}, "name"),
        ({"name": "x", "api_key": "k"}, "email"),
        ({"name": "x", "email": " x@y", "api_key": "k"}, "email"),
        ({"name": "x", "email": "x@y", "api_key": 12345}, "api_key"),
        ({"name": "x", "email": "x@y", "api_key": ""}, "api_key"),
        ({"name": "x", "email": "x@y", "api_key": "k", "apikey": "k"}, "apikey"),
    ],
)
def test_a_bad_account_is_422_naming_the_field(
    admin: SandboxAdmin, body: dict[str, Any], field: str
) -> None:
    answer = admin.call("POST", "accounts", body)
    assert answer.status_code == 422
    assert field in answer.json()["error"]


def test_a_taken_name_or_email_is_409_and_a_non_object_400(admin: SandboxAdmin) -> None:
    assert admin.add_account("a", "new@loja.example", "k").status_code == 409
    assert admin.add_account("default", "new@loja.example", "k").status_code == 409
    taken_email = admin.add_account("new", "b@loja.example", "k-secret")
    assert taken_email.status_code == 409
    assert "b@loja.example" in taken_email.json()["error"]
    assert "k-secret" not in taken_email.text
    assert admin.call("POST", "accounts", ["a"]).status_code == 400


def test_reset_one_account_or_all(sb: Sandbox, admin: SandboxAdmin, a: httpx.Client) -> None:
    assert admin.add_account("c", "c@loja.example", "kc").status_code == 201
    for name in ("default", "a", "b"):
        admin.seed_order({"code": f"{name}-1"}, account=name)
    admin.revoke("a")
    assert admin.reset(account="a").status_code == 204
    assert admin.state(account="a")["orders"] == {}
    assert a.get("/products").status_code == 200  # the key is restored too
    assert admin.state(account="b")["orders"].keys() == {"b-1"}
    assert admin.reset().status_code == 204
    assert [x["name"] for x in admin.accounts()] == ["default", "a", "b"]  # c was added later
    assert admin.state(account="b")["orders"] == {}
    assert admin.state()["orders"] == {}


# --------------------------------------------------------------------------- in Python


def test_the_python_side_takes_account(sb: Sandbox) -> None:
    sb.seed_product({"sku": "PY-1", "price": 2.0}, account="a")
    sb.change_product("PY-1", {"price": 2.5}, account="a")
    sb.seed_order({"code": "PY-O-1"}, account="b")
    sb.add_account("c", "c@loja.example", "kc")
    assert sb.state(account="a")["products"]["PY-1"]["price"] == 2.5
    assert sb.state(account="b")["queue"] == ["PY-O-1"]
    assert sb.state(account="c")["products"] == {}
    with pytest.raises(UnknownAccountError, match="ghost"):
        sb.state(account="ghost")
    with pytest.raises(AccountExistsError):
        sb.add_account("c", "other@loja.example", "k")
    with pytest.raises(ValueError, match="email"):
        sb.add_account("d", "", "k")
    sb.reset(account="a")
    assert sb.state(account="a")["products"] == {}


def test_accounts_in_the_config_must_not_collide() -> None:
    twice = [*ACCOUNTS, SandboxAccount("a", "z@loja.example", "kz")]
    with pytest.raises(ValueError, match="'a'"):
        Sandbox(SandboxConfig(accounts=twice))
    with pytest.raises(ValueError, match="ops@x"):
        Sandbox(SandboxConfig(email="ops@x", accounts=[SandboxAccount("o", "ops@x", "k")]))
    with pytest.raises(ValueError, match="accounts"):
        Sandbox().configure(accounts=[])


# --------------------------------------------------------------------------- skysync sandbox


def test_sandbox_command_registers_the_accounts_given(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    """``--account`` as the command parses it, then served (the serving itself is stubbed:
    the config it would serve is started here)."""
    served: list[SandboxConfig] = []
    monkeypatch.setattr("skysync.emulator.main_sandbox", served.append)
    monkeypatch.setattr("skysync.entrypoints.cli.operations.stop_on_sigterm", lambda: None)
    result = CliRunner().invoke(
        cli,
        [
            "sandbox",
            "--port",
            "0",
            "--account",
            f"a=a@loja.example:{KEY_A}",
            "--account",
            f"b=b@loja.example:{KEY_B}:with-colon",
        ],
    )
    assert result.exit_code == 0, result.output
    (config,) = served
    assert [(x.name, x.email) for x in config.accounts] == [
        ("a", "a@loja.example"),
        ("b", "b@loja.example"),
    ]
    assert config.accounts[1].api_key == f"{KEY_B}:with-colon"
    with Sandbox(config) as sandbox, _client(sandbox, CREDS_A) as a:
        assert a.get("/products").status_code == 200
        with _client(sandbox, {**CREDS_A, "X-Api-Key": "nope"}) as wrong:
            assert wrong.get("/products").status_code == 401


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("a-a@x-secret-key-9", "NAME=EMAIL:API_KEY"),
        ("default=a@x:secret-key-9", "default"),
        ("bad name=a@x:secret-key-9", "name"),
    ],
)
def test_sandbox_command_refuses_a_bad_account_without_echoing_the_key(
    clean_env: Path, spec: str, needle: str
) -> None:
    result = CliRunner().invoke(cli, ["sandbox", "--port", "0", "--account", spec])
    assert result.exit_code == 2
    assert "--account" in result.output and needle in result.output
    assert "secret-key-9" not in result.output


@pytest.mark.slow
def test_sandbox_command_serves_each_account_its_own_catalogue(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKYSYNC_")}
    command = [str(Path(sys.executable).parent / "skysync"), "sandbox", "--port", str(port)]
    command += ["--account", f"a=a@loja.example:{KEY_A}", "--account", f"b=b@loja.example:{KEY_B}"]
    proc = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_sandbox(base, proc)
        product = {"product": {"sku": "CLI-1", "name": "x", "price": 1.0, "qty": 1}}
        made = httpx.post(f"{base}/products", json=product, headers=CREDS_A)
        on_b = httpx.get(f"{base}/products/CLI-1", headers=CREDS_B)
        wrong = httpx.get(f"{base}/products/CLI-1", headers={**CREDS_A, "X-Api-Key": KEY_B})
        assert (made.status_code, on_b.status_code, wrong.status_code) == (201, 404, 401)
        names = [x["name"] for x in httpx.get(f"{base}/_sandbox/accounts").json()["accounts"]]
        assert names == ["default", "a", "b"]
        proc.terminate()
        output, _ = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert b"account a: a@loja.example" in output
        assert KEY_A.encode() not in output and KEY_B.encode() not in output
    finally:
        proc.kill()
        proc.wait(timeout=10)
