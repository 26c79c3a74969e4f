"""The SkyHub emulator over real HTTP: the behaviour the client, tests and benchmarks rely on.

Every test starts its own emulator on an ephemeral port and talks to it with httpx, so what is
checked is what a client sees on the wire (status codes, bodies, dropped connections), not the
emulator's internals.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from conftest import sandbox_fixture

from skysync.emulator import LINKED_DELETE_ERROR, Sandbox, SandboxConfig
from skysync.emulator.limits import peak_per_second

AUTH = {
    "X-User-Email": "loja@example.com",
    "X-Api-Key": "api-key-value-123",
    "X-Accountmanager-Key": "account-key-value-456",
}
SPACED_CODE = "Lojas Americanas-1517940500554-01"
NFE_KEY = "35190112345678000190550010000012341000012345"
# httpx builds a TLS context for every client, even for plain HTTP; one shared context keeps
# the many short-lived clients here cheap.
_TLS = ssl.create_default_context()


def _client(sb: Sandbox, timeout: float = 5.0, **kwargs: Any) -> httpx.Client:
    kwargs.setdefault("headers", AUTH)
    return httpx.Client(base_url=sb.base_url, timeout=timeout, verify=_TLS, **kwargs)


sb = sandbox_fixture(SandboxConfig, seed=7)


@pytest.fixture
def client(sb: Sandbox) -> Iterator[httpx.Client]:
    with _client(sb) as c:
        yield c


# An emulator without rate limits, for tests that need many requests quickly.
free_sb = sandbox_fixture(SandboxConfig, name="free_sb", seed=7, rate_limits_enabled=False)


@pytest.fixture
def free_client(free_sb: Sandbox) -> Iterator[httpx.Client]:
    with _client(free_sb) as c:
        yield c


def _seg(value: str) -> str:
    """Percent-encode one path segment, as SkyHub clients must for SKUs and order codes."""
    return quote(value, safe="")


def _create(client: httpx.Client, sku: str, **fields: Any) -> httpx.Response:
    product = {"sku": sku, "name": f"Produto {sku}", "price": 10.0, "qty": 5, **fields}
    return client.post("/products", json={"product": product})


# --------------------------------------------------------------------------- auth and bodies


@pytest.mark.parametrize("missing", sorted(AUTH))
def test_each_missing_auth_header_is_401_naming_it(sb: Sandbox, missing: str) -> None:
    headers = {k: v for k, v in AUTH.items() if k != missing}
    with _client(sb, headers=headers) as c:
        response = c.get("/products")
    assert response.status_code == 401
    assert missing in response.json()["error"]


def test_empty_auth_header_is_401(sb: Sandbox) -> None:
    with _client(sb, headers={**AUTH, "X-Api-Key": ""}) as c:
        assert c.get("/products").status_code == 401


def test_configured_credentials_are_enforced_and_never_echoed(caplog: Any) -> None:
    caplog.set_level(logging.DEBUG, logger="skysync.sandbox")
    config = SandboxConfig(
        email=AUTH["X-User-Email"],
        api_key=AUTH["X-Api-Key"],
        account_key=AUTH["X-Accountmanager-Key"],
    )
    with Sandbox(config) as sandbox:
        wrong = {**AUTH, "X-Api-Key": "wrong-secret-789"}
        with _client(sandbox, headers=wrong) as c:
            refused = c.get("/products")
        with _client(sandbox) as c:
            accepted = c.get("/products")
            config_view = c.get("/_sandbox/config").json()
        recorded = repr(sandbox.request_log()) + repr(sandbox.request_counts())
    assert refused.status_code == 401
    assert "X-Api-Key" in refused.json()["error"]
    assert accepted.status_code == 200
    for secret in ("wrong-secret-789", AUTH["X-Api-Key"], AUTH["X-Accountmanager-Key"]):
        assert secret not in refused.text
        assert secret not in caplog.text
        assert secret not in recorded
        assert secret not in repr(config_view)


def test_admin_endpoints_need_no_auth(sb: Sandbox) -> None:
    with _client(sb, headers={}) as c:
        assert c.get("/_sandbox/state").status_code == 200


def test_non_utf8_body_is_415(client: httpx.Client) -> None:
    response = client.post(
        "/products",
        content='{"product": {"sku": "A", "name": "Maçã"}}'.encode("latin-1"),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 415
    assert "error" in response.json()


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"", "obrigat"), (b"{not json", "JSON"), (b'{"sku": "A", "price": 10}', "'product'")],
)
def test_bad_product_bodies_are_400(client: httpx.Client, content: bytes, needle: str) -> None:
    response = client.post(
        "/products", content=content, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert needle in response.json()["error"]


def test_variation_put_without_wrapper_is_400_naming_variation(client: httpx.Client) -> None:
    assert _create(client, "P1", variations=[{"sku": "P1-V", "qty": 1}]).status_code == 201
    response = client.put("/variations/P1-V", json={"qty": 3})
    assert response.status_code == 400
    assert "'variation'" in response.json()["error"]


def test_unknown_endpoint_is_404_with_error_body(client: httpx.Client) -> None:
    response = client.get("/categories")
    assert response.status_code == 404
    assert "error" in response.json()


# --------------------------------------------------------------------------- products


def test_product_create_then_duplicate_is_422(client: httpx.Client, sb: Sandbox) -> None:
    created = _create(client, "SKU-1")
    assert created.status_code == 201
    duplicate = _create(client, "SKU-1")
    assert duplicate.status_code == 422
    assert "já existe" in duplicate.json()["error"]
    assert sb.state()["products"]["SKU-1"]["price"] == 10.0


@pytest.mark.parametrize("price", [0, 0.0, None])
def test_zero_or_null_price_is_422(client: httpx.Client, sb: Sandbox, price: Any) -> None:
    response = _create(client, "ZERO", price=price)
    assert response.status_code == 422
    assert "price" in response.json()["error"]
    assert "ZERO" not in sb.state()["products"]


def test_missing_sku_is_422(client: httpx.Client) -> None:
    response = client.post("/products", json={"product": {"name": "Sem SKU", "price": 5}})
    assert response.status_code == 422


def test_partial_put_changes_only_given_fields(client: httpx.Client) -> None:
    _create(client, "SKU/2", description="Original", brand="Acme")
    response = client.put(f"/products/{_seg('SKU/2')}", json={"product": {"qty": 0}})
    assert response.status_code == 204
    assert response.content == b""
    product = client.get(f"/products/{_seg('SKU/2')}").json()
    assert product["qty"] == 0
    assert product["name"] == "Produto SKU/2"
    assert product["description"] == "Original"
    assert product["brand"] == "Acme"
    assert product["price"] == 10.0


def test_put_and_get_of_unknown_product_are_404(client: httpx.Client) -> None:
    assert client.put("/products/NOPE", json={"product": {"qty": 1}}).status_code == 404
    assert client.get("/products/NOPE").status_code == 404
    assert client.delete("/products/NOPE").status_code == 404


def test_put_with_zero_price_is_422_and_changes_nothing(client: httpx.Client, sb: Sandbox) -> None:
    _create(client, "P")
    response = client.put("/products/P", json={"product": {"price": 0, "qty": 9}})
    assert response.status_code == 422
    assert sb.state()["products"]["P"]["qty"] == 5


def test_a_whole_number_float_is_taken_where_skyhub_takes_an_integer(
    client: httpx.Client, sb: Sandbox
) -> None:
    """Published SkyHub clients send every quantity as a float (7.0): SkyHub takes a whole
    one, and stores the integer. 7.5 is still no quantity."""
    assert _create(client, "F", qty=3.0, variations=[{"sku": "F-V", "qty": 2.0}]).status_code == 201
    assert sb.state()["products"]["F"]["qty"] == 3
    assert client.put("/products/F", json={"product": {"qty": 7.0}}).status_code == 204
    assert client.put("/variations/F-V", json={"variation": {"qty": 4.0}}).status_code == 204
    product = client.get("/products/F").json()
    assert product["qty"] == 7 and isinstance(product["qty"], int)
    assert sb.state()["variations"]["F-V"]["qty"] == 4
    for bad in (7.5, -1.0, "7", True):
        refused = client.put("/products/F", json={"product": {"qty": bad}})
        assert refused.status_code == 422, bad
        assert "qty" in refused.json()["error"]
        refused = client.put("/variations/F-V", json={"variation": {"qty": bad}})
        assert refused.status_code == 422, bad
    assert sb.state()["products"]["F"]["qty"] == 7


def test_association_pending_until_admin_link() -> None:
    with Sandbox(SandboxConfig(link_delay=None)) as sandbox, _client(sandbox) as c:
        _create(c, "L1")
        before = c.get("/products/L1").json()["associations"]
        assert c.post("/_sandbox/products/L1/link").status_code == 204
        after = c.get("/products/L1").json()["associations"]
        assert c.post("/_sandbox/products/NOPE/link").status_code == 404
    assert before == [{"platform": "B2W", "status": "pending"}]
    assert after == [{"platform": "B2W", "status": "linked"}]


def test_association_linked_at_once_with_zero_delay(client: httpx.Client) -> None:
    _create(client, "L0")
    assert client.get("/products/L0").json()["associations"][0]["status"] == "linked"


def test_association_links_after_link_delay() -> None:
    with Sandbox(SandboxConfig(link_delay=0.2)) as sandbox, _client(sandbox) as c:
        _create(c, "LD")
        assert c.get("/products/LD").json()["associations"][0]["status"] == "pending"
        time.sleep(0.25)
        assert c.get("/products/LD").json()["associations"][0]["status"] == "linked"


def test_delete_linked_product_is_refused_unlinked_is_204() -> None:
    with Sandbox(SandboxConfig(link_delay=None)) as sandbox, _client(sandbox) as c:
        _create(c, "KEEP")
        _create(c, "GONE")
        sandbox.link_product("KEEP")
        refused = c.delete("/products/KEEP")
        deleted = c.delete("/products/GONE")
        assert c.get("/products/GONE").status_code == 404
    assert refused.status_code == 422
    assert refused.json() == {"error": LINKED_DELETE_ERROR}
    assert deleted.status_code == 204
    assert deleted.content == b""


def test_product_list_pages_with_next_cursor(free_client: httpx.Client) -> None:
    for i in range(23):
        assert _create(free_client, f"LIST-{i:02d}").status_code == 201
    first = free_client.get("/products", params={"per_page": 10}).json()
    assert first["total"] == 23
    assert [p["sku"] for p in first["products"]] == [f"LIST-{i:02d}" for i in range(10)]
    seen = [p["sku"] for p in first["products"]]
    next_url = first["next"]
    pages = 1
    while next_url:
        assert next_url.startswith("/products?cursor=")
        page = free_client.get(next_url).json()
        seen += [p["sku"] for p in page["products"]]
        next_url = page["next"]
        pages += 1
    assert pages == 3
    assert seen == [f"LIST-{i:02d}" for i in range(23)]
    by_page = free_client.get("/products", params={"page": 3, "per_page": 10}).json()
    assert [p["sku"] for p in by_page["products"]] == ["LIST-20", "LIST-21", "LIST-22"]
    assert by_page["next"] is None
    default = free_client.get("/products").json()
    assert len(default["products"]) == 23
    assert default["next"] is None
    assert free_client.get("/products", params={"cursor": "garbage!"}).status_code == 400


# --------------------------------------------------------------------------- variations


def test_variation_create_put_get(client: httpx.Client, sb: Sandbox) -> None:
    _create(client, "PARENT")
    created = client.post(
        f"/products/{_seg('PARENT')}/variations",
        json={"variation": {"sku": "PARENT-P", "qty": 2, "ean": "789"}},
    )
    assert created.status_code == 201
    assert client.put("/variations/PARENT-P", json={"variation": {"qty": 7}}).status_code == 204
    variation = client.get("/variations/PARENT-P").json()
    assert variation == {"sku": "PARENT-P", "qty": 7, "ean": "789"}
    parent = client.get("/products/PARENT").json()
    assert parent["variations"] == [{"sku": "PARENT-P", "qty": 7, "ean": "789"}]
    assert sb.state()["variations"]["PARENT-P"]["parent_sku"] == "PARENT"
    duplicate = client.post("/products/PARENT/variations", json={"variation": {"sku": "PARENT-P"}})
    assert duplicate.status_code == 422


def test_variation_errors(client: httpx.Client) -> None:
    orphan = client.post("/products/NOPE/variations", json={"variation": {"sku": "X-1"}})
    assert orphan.status_code == 404
    assert client.get("/variations/NOPE").status_code == 404
    assert client.put("/variations/NOPE", json={"variation": {"qty": 1}}).status_code == 404


def test_product_with_variations_creates_them(client: httpx.Client, sb: Sandbox) -> None:
    response = _create(
        client, "MULTI", variations=[{"sku": "MULTI-P", "qty": 1}, {"sku": "MULTI-M", "qty": 2}]
    )
    assert response.status_code == 201
    variations = sb.state()["variations"]
    assert {v: variations[v]["parent_sku"] for v in variations} == {
        "MULTI-P": "MULTI",
        "MULTI-M": "MULTI",
    }


def test_variation_delete_refused_while_parent_linked() -> None:
    with Sandbox(SandboxConfig(link_delay=None)) as sandbox, _client(sandbox) as c:
        _create(c, "VP", variations=[{"sku": "VP-1", "qty": 1}, {"sku": "VP-2", "qty": 1}])
        assert c.delete("/variations/VP-1").status_code == 204
        sandbox.link_product("VP")
        refused = c.delete("/variations/VP-2")
    assert refused.status_code == 422
    assert refused.json()["error"] == LINKED_DELETE_ERROR


# --------------------------------------------------------------------------- orders and queue


def test_queue_delivers_one_order_hides_it_and_redelivers() -> None:
    with Sandbox(SandboxConfig(visibility_timeout=0.3)) as sandbox, _client(sandbox) as c:
        first = sandbox.seed_order({"code": "Lojas Americanas-1-01"})
        sandbox.seed_order({"code": "Lojas Americanas-2-01", "status": "payment_received"})
        got1 = c.get("/queues/orders")
        got2 = c.get("/queues/orders")
        empty = c.get("/queues/orders")
        time.sleep(0.35)
        again = c.get("/queues/orders")
        assert c.delete(f"/queues/orders/{_seg(first['code'])}").status_code == 204
        assert c.delete("/queues/orders/Lojas%20Americanas-2-01").status_code == 204
        assert c.delete("/queues/orders/Lojas%20Americanas-2-01").status_code == 404
        time.sleep(0.35)
        after_ack = c.get("/queues/orders")
    assert got1.status_code == 200
    assert got1.json()["code"] == "Lojas Americanas-1-01"
    assert got1.json()["status"] == {
        "code": "book_product",
        "label": "Pagamento Pendente",
        "type": "NEW",
    }
    assert got2.json()["code"] == "Lojas Americanas-2-01"
    assert got2.json()["status"]["type"] == "APPROVED"
    assert empty.status_code == 204
    assert empty.content == b""
    assert again.status_code == 200
    assert again.json()["code"] == "Lojas Americanas-1-01"
    assert after_ack.status_code == 204


def test_empty_queue_is_204(client: httpx.Client) -> None:
    response = client.get("/queues/orders")
    assert response.status_code == 204
    assert response.content == b""


def test_order_code_with_spaces_through_url_encoding(client: httpx.Client, sb: Sandbox) -> None:
    sb.seed_order({"code": SPACED_CODE})
    response = client.get(f"/orders/{_seg(SPACED_CODE)}")
    assert response.status_code == 200
    order = response.json()
    assert order["code"] == SPACED_CODE
    assert order["channel"] == "Lojas Americanas"
    assert order["items"]
    assert order["customer"]["name"]
    assert client.delete(f"/queues/orders/{_seg(SPACED_CODE)}").status_code == 204
    assert sb.state()["queue"] == []


def test_valid_status_chain_reenqueues_each_change(
    free_client: httpx.Client, free_sb: Sandbox
) -> None:
    code = free_sb.seed_order({})["code"]
    assert free_client.get("/queues/orders").json()["code"] == code
    assert free_client.delete(f"/queues/orders/{_seg(code)}").status_code == 204
    base = f"/orders/{_seg(code)}"
    steps = [
        ("approval", {"status": "payment_received"}, "payment_received"),
        ("invoice", {"status": "order_invoiced", "invoice": {"key": NFE_KEY}}, "order_invoiced"),
        (
            "shipments",
            {
                "status": "order_shipped",
                "shipment": {
                    "code": "SHIP-1",
                    "items": [{"sku": "SKYSYNC-DEMO-1", "qty": 1}],
                    "track": {"code": "BR123", "carrier": "Correios", "method": "PAC", "url": ""},
                },
            },
            "order_shipped",
        ),
        ("delivery", {"status": "complete", "delivered_date": "2025-01-10"}, "complete"),
    ]
    for action, body, expected in steps:
        response = free_client.post(f"{base}/{action}", json=body)
        assert response.status_code == 201, response.text
        assert free_client.get(base).json()["status"]["code"] == expected
        queued = free_client.get("/queues/orders")
        assert queued.status_code == 200
        assert queued.json()["status"]["code"] == expected
        assert free_client.delete(f"/queues/orders/{_seg(code)}").status_code == 204
    order = free_sb.state()["orders"][code]
    assert order["invoices"][0]["key"] == NFE_KEY
    assert order["shipments"][0]["items"] == [{"sku": "SKYSYNC-DEMO-1", "qty": 1}]
    assert order["delivered_date"] == "2025-01-10"
    assert order["status"] == {
        "code": "complete",
        "label": "Completo (entregue)",
        "type": "DELIVERED",
    }


def test_invalid_and_repeated_transitions_are_422(
    free_client: httpx.Client, free_sb: Sandbox
) -> None:
    code = free_sb.seed_order({"code": SPACED_CODE})["code"]
    base = f"/orders/{_seg(code)}"
    invoice = {"status": "order_invoiced", "invoice": {"key": NFE_KEY}}
    skipped = free_client.post(f"{base}/invoice", json=invoice)
    assert skipped.status_code == 422
    assert "book_product" in skipped.json()["error"]
    assert "order_invoiced" in skipped.json()["error"]
    assert (
        free_client.post(f"{base}/approval", json={"status": "payment_received"}).status_code == 201
    )
    repeat = free_client.post(f"{base}/approval", json={"status": "payment_received"})
    assert repeat.status_code == 422
    assert "payment_received" in repeat.json()["error"]
    bad_key = free_client.post(
        f"{base}/invoice", json={"status": "order_invoiced", "invoice": {"key": "123"}}
    )
    assert bad_key.status_code == 422
    mismatched = free_client.post(f"{base}/invoice", json={"status": "complete"})
    assert mismatched.status_code == 422
    assert free_client.post(f"{base}/cancel", json={"status": "order_canceled"}).status_code == 201
    final = free_client.post(f"{base}/invoice", json=invoice)
    assert final.status_code == 422
    assert free_sb.state()["orders"][code]["status"]["code"] == "order_canceled"
    assert (
        free_client.post("/orders/NOPE/cancel", json={"status": "order_canceled"}).status_code
        == 404
    )


def test_sandbox_order_create_and_list_filters(free_client: httpx.Client) -> None:
    created = free_client.post("/orders", json={"order": {"code": "Submarino-9-01"}})
    assert created.status_code == 201
    assert created.json()["channel"] == "Submarino"
    assert (
        free_client.post("/orders", json={"order": {"code": "Submarino-9-01"}}).status_code == 422
    )
    free_client.post("/_sandbox/orders", json={"code": "Shoptime-8-01", "status": "order_canceled"})
    listed = free_client.get("/orders", params={"filters[statuses][]": "order_canceled"}).json()
    assert listed["total"] == 1
    assert [o["code"] for o in listed["orders"]] == ["Shoptime-8-01"]
    assert free_client.get("/orders").json()["total"] == 2


def test_raw_orders_are_queued_unvalidated(client: httpx.Client) -> None:
    seeded = client.post("/_sandbox/orders", json={"raw": {"code": "RAW-1", "items": "oops"}})
    assert seeded.status_code == 201
    queued = client.get("/queues/orders").json()
    assert queued == {"code": "RAW-1", "items": "oops"}


def test_marketplace_change_by_reseeding_requeues_the_order(
    sb: Sandbox, client: httpx.Client
) -> None:
    code = sb.seed_order({})["code"]
    assert client.get("/queues/orders").status_code == 200
    assert client.get("/queues/orders").status_code == 204
    sb.seed_order({"code": code, "status": "order_canceled"})
    assert sb.state()["queue"] == [code]
    redelivered = client.get("/queues/orders").json()
    assert redelivered["status"]["code"] == "order_canceled"


def test_an_order_created_through_the_api_keeps_its_items_and_dates(
    free_client: httpx.Client,
) -> None:
    """POST /orders takes the order's items, expedition limit and estimated delivery as given
    (the realistic defaults fill the rest) and queues it with them."""
    items = [
        {"id": "SKU-1", "product_id": "P-1", "name": "Camiseta", "qty": 2, "special_price": 49.9}
    ]
    order = {
        "code": "Lojas Americanas-77-01",
        "status": "payment_received",
        "items": items,
        "expedition_limit_date": "2026-12-08T10:00:00-03:00",
        "estimated_delivery": "2026-12-15",
        "approved_date": "2026-12-07T09:00:00-03:00",
    }
    created = free_client.post("/orders", json={"order": order})
    assert created.status_code == 201, created.text
    queued = free_client.get("/queues/orders").json()
    for name in ("items", "expedition_limit_date", "estimated_delivery", "approved_date"):
        assert queued[name] == order[name], name
    assert queued["status"]["code"] == "payment_received"
    assert queued["total_ordered"] == 99.8  # follows the items
    assert queued["customer"]["name"] and queued["shipping_address"]["city"]


def test_admin_moves_an_order_s_dates_and_queues_it_again(
    sb: Sandbox, client: httpx.Client
) -> None:
    """POST /_sandbox/orders/{code}/dates: the marketplace reschedules an order. The dates
    change, updated_at moves past the one before (a client tells an update from a
    redelivery by it), and the order is queued again with them; ?account= names the account."""
    code = sb.seed_order({"code": SPACED_CODE, "status": "payment_received"})["code"]
    first = client.get("/queues/orders").json()
    client.delete(f"/queues/orders/{_seg(code)}")
    assert sb.state()["queue"] == []
    dates = {
        "expedition_limit_date": "2026-12-01T10:00:00-03:00",
        "estimated_delivery": "2026-12-05",
        "approved_date": "2026-11-30T08:00:00",
        "placed_at": "2026-11-30T07:59:00-03:00",
    }
    moved = httpx.post(f"{sb.base_url}/_sandbox/orders/{_seg(code)}/dates", json=dates)
    assert moved.status_code == 200, moved.text
    assert {name: moved.json()[name] for name in dates} == dates
    assert sb.state()["queue"] == [code]
    again = client.get("/queues/orders").json()
    assert {name: again[name] for name in dates} == dates
    assert again["updated_at"] > first["updated_at"]  # same offset: the text orders as the time
    assert again["status"] == first["status"] and again["items"] == first["items"]
    cleared = httpx.post(
        f"{sb.base_url}/_sandbox/orders/{_seg(code)}/dates", json={"approved_date": None}
    )
    assert cleared.status_code == 200 and cleared.json()["approved_date"] is None


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"expedition_limit_date": "amanhã"}, 422, "expedition_limit_date: must be an ISO-8601"),
        ({"estimated_delivery": 20261215}, 422, "estimated_delivery: must be an ISO-8601"),
        ({"placed_at": "  "}, 422, "placed_at: must be"),
        ({"shipped_date": "2026-12-01"}, 422, "shipped_date: not a date that can be moved"),
        ({}, 400, "Envie as datas"),
        (["2026-12-01"], 400, "Envie as datas"),
    ],
)
def test_moving_dates_refuses_a_bad_field_naming_it_and_changes_nothing(
    sb: Sandbox, body: Any, status: int, needle: str
) -> None:
    order = sb.seed_order({"code": "Submarino-5-01", "status": "payment_received"})
    before = sb.state()["orders"]["Submarino-5-01"]
    answer = httpx.post(
        f"{sb.base_url}/_sandbox/orders/Submarino-5-01/dates",
        json={**body, "approved_date": "2026-12-01"} if isinstance(body, dict) and body else body,
    )
    assert answer.status_code == status, answer.text
    assert needle in answer.json()["error"]
    assert sb.state()["orders"]["Submarino-5-01"] == before == order


def test_moving_dates_of_an_unknown_order_or_account_is_404(sb: Sandbox) -> None:
    body = {"expedition_limit_date": "2026-12-01"}
    unknown = httpx.post(f"{sb.base_url}/_sandbox/orders/NOPE-1/dates", json=body)
    assert unknown.status_code == 404 and "NOPE-1" in unknown.json()["error"]
    sb.seed_order({"code": "Submarino-6-01"})
    elsewhere = httpx.post(
        f"{sb.base_url}/_sandbox/orders/Submarino-6-01/dates?account=loja-x", json=body
    )
    assert elsewhere.status_code == 404 and "loja-x" in elsewhere.json()["error"]


def test_sync_errors_is_a_list(client: httpx.Client) -> None:
    assert client.get("/sync_errors/products").json() == {"error_qty": 0, "errors": []}


# --------------------------------------------------------------------------- rate limits


def _max_in_any_second(times: list[float]) -> int:
    return max((sum(1 for u in times if t <= u < t + 1.0) for t in times), default=0)


def test_peak_per_second_reads_a_log_as_the_brute_force_count_does() -> None:
    """The helper benchmarks and the compose test read request logs with agrees with the
    obvious (quadratic) count, including windows that start exactly one second apart."""
    rng = random.Random(7)
    for _ in range(200):
        # eighths of a second: exact in binary, so "exactly one second apart" is exact too
        times = [rng.randint(0, 40) / 8 for _ in range(rng.randint(0, 40))]
        assert peak_per_second(times) == _max_in_any_second(times), times


def test_burst_is_limited_to_nine_per_second(client: httpx.Client, sb: Sandbox) -> None:
    _create(client, "RL")
    statuses = [
        client.put("/products/RL", json={"product": {"qty": i}}).status_code for i in range(15)
    ]
    assert 429 in statuses
    assert set(statuses) == {204, 429}
    puts = [e for e in sb.request_log() if e["method"] == "PUT"]
    accepted = [e["t"] for e in puts if e["status"] == 204]
    assert len(accepted) >= 9  # exactly 9 unless the burst itself took over a second
    assert _max_in_any_second(accepted) <= 9
    limited = client.put("/products/RL", json={"product": {"qty": 99}})
    assert limited.status_code == 429
    assert "error" in limited.json()
    assert "Retry-After" not in limited.headers
    # Another bucket is not affected by the PUT burst.
    assert client.get("/products/RL").status_code == 200


def test_retry_after_only_when_configured() -> None:
    with (
        Sandbox(SandboxConfig(rate_limit=2, retry_after_header=True)) as sandbox,
        _client(sandbox) as c,
    ):
        statuses = [c.get("/products").status_code for _ in range(3)]
        limited = c.get("/products")
    assert statuses == [200, 200, 429]
    assert limited.headers["Retry-After"] == "1"


def test_rate_limit_scales_one_per_second_buckets() -> None:
    with Sandbox(SandboxConfig(rate_limit=4.5)) as sandbox, _client(sandbox) as c:
        sandbox.seed_order({"code": "O-1"})
        assert c.get("/orders/O-1").status_code == 200
        assert c.get("/orders/O-1").status_code == 429  # 1/s scaled to 0.5/s
        assert c.get("/orders").status_code == 200  # list and single counted separately


# --------------------------------------------------------------------------- faults


def test_fail_rate_answers_5xx_without_applying() -> None:
    with (
        Sandbox(SandboxConfig(fail_rate=1.0, seed=3, rate_limits_enabled=False)) as sandbox,
        _client(sandbox) as c,
    ):
        responses = [_create(c, f"F{i}") for i in range(12)]
        state = sandbox.state()
    assert {r.status_code for r in responses} <= {500, 502, 503}
    assert len({r.status_code for r in responses}) > 1
    for response in responses:
        if response.status_code == 502:
            assert response.headers["Content-Type"].startswith("text/html")
        else:
            assert "error" in response.json()
    assert state["products"] == {}


def test_scripted_502_is_an_html_page(client: httpx.Client, sb: Sandbox) -> None:
    sb.script_fault("GET", "/products", "502")
    response = client.get("/products")
    assert response.status_code == 502
    assert "<html>" in response.text
    assert client.get("/products").status_code == 200


def test_clear_faults_drops_the_scripted_ones_left(client: httpx.Client, sb: Sandbox) -> None:
    sb.script_fault("GET", "/products", "502", count=3)
    assert client.get("/products").status_code == 502
    sb.clear_faults()
    assert client.get("/products").status_code == 200


def test_scripted_timeout_hangs_and_does_not_apply(sb: Sandbox) -> None:
    sb.configure(hang_seconds=0.5)
    with _client(sb, timeout=0.2) as c:
        _create(c, "T")
        sb.script_fault("PUT", "/products/T", "timeout")
        with pytest.raises((httpx.ReadTimeout, httpx.RemoteProtocolError)):
            c.put("/products/T", json={"product": {"qty": 1}})
        time.sleep(0.4)
        assert c.get("/products/T").json()["qty"] == 5
    entry = sb.request_log()[-2]
    assert (entry["method"], entry["status"], entry["fault"]) == ("PUT", None, "timeout")


def test_scripted_lost_answer_applies_and_drops(client: httpx.Client, sb: Sandbox) -> None:
    _create(client, "LOST ONE")
    sb.script_fault("PUT", "/products/LOST ONE", "lost")
    with pytest.raises(httpx.RemoteProtocolError):
        client.put(f"/products/{_seg('LOST ONE')}", json={"product": {"qty": 42}})
    assert sb.state()["products"]["LOST ONE"]["qty"] == 42
    assert sb.request_counts()["PUT /products/{sku} None"] == 1
    # The client recovers on a new connection.
    assert client.get(f"/products/{_seg('LOST ONE')}").json()["qty"] == 42


def test_scripted_drop_and_429(client: httpx.Client, sb: Sandbox) -> None:
    sb.script_fault("POST", "/products", "drop")
    with pytest.raises(httpx.RemoteProtocolError):
        _create(client, "D")
    assert "D" not in sb.state()["products"]
    sb.script_fault("*", "/products", "429", count=2)
    assert _create(client, "D").status_code == 429
    assert client.get("/products").status_code == 429
    assert _create(client, "D").status_code == 201


def test_lost_answer_rate_hits_writes_only(client: httpx.Client, sb: Sandbox) -> None:
    _create(client, "W")
    sb.configure(lost_answer_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        client.put("/products/W", json={"product": {"qty": 0}})
    assert client.get("/products/W").json()["qty"] == 0


def test_timeout_rate_via_admin_config(sb: Sandbox) -> None:
    with _client(sb, timeout=0.2) as c:
        assert (
            c.post("/_sandbox/config", json={"timeout_rate": 1.0, "hang_seconds": 0.3}).status_code
            == 200
        )
        with pytest.raises((httpx.ReadTimeout, httpx.RemoteProtocolError)):
            _create(c, "TR")
        assert c.post("/_sandbox/config", json={"timeout_rate": 0.0}).status_code == 200
        assert "TR" not in sb.state()["products"]
        assert c.post("/_sandbox/config", json={"bogus": 1}).status_code == 400


def test_latency_delays_every_request() -> None:
    with Sandbox(SandboxConfig(latency_ms=150)) as sandbox, _client(sandbox) as c:
        started = time.monotonic()
        response = c.get("/products")
        elapsed = time.monotonic() - started
        admin_started = time.monotonic()
        c.get("/_sandbox/state")
        admin_elapsed = time.monotonic() - admin_started
    assert response.status_code == 200
    assert elapsed >= 0.15
    assert admin_elapsed < 0.15


def test_admin_faults_endpoint(client: httpx.Client) -> None:
    scripted = client.post(
        "/_sandbox/faults",
        json={"method": "GET", "path_prefix": "/orders", "fault": "503", "count": 1},
    )
    assert scripted.status_code == 204
    assert client.get("/orders").status_code == 503
    bad = client.post("/_sandbox/faults", json={"fault": "explode"})
    assert bad.status_code == 400


# --------------------------------------------------------------------------- admin


def test_request_counts_log_and_reset(client: httpx.Client, sb: Sandbox) -> None:
    _create(client, "C")
    client.put("/products/C", json={"product": {"qty": 1}})
    client.get("/products/NOPE")
    counts = client.get("/_sandbox/requests").json()["counts"]
    assert counts == {
        "POST /products 201": 1,
        "PUT /products/{sku} 204": 1,
        "GET /products/{sku} 404": 1,
    }
    log = sb.request_log()
    assert [e["route"] for e in log] == ["/products", "/products/{sku}", "/products/{sku}"]
    assert log[1]["body"] == {"product": {"qty": 1}}
    assert log[2]["path"] == "/products/NOPE"
    assert client.post("/_sandbox/reset").status_code == 204
    state = client.get("/_sandbox/state").json()
    assert state["products"] == {}
    assert state["queue"] == []
    assert sb.request_counts() == {}
    assert sb.request_log() == []


def test_reset_clears_rate_windows_and_scripted_faults(client: httpx.Client, sb: Sandbox) -> None:
    sb.configure(rate_limit=1)
    assert client.get("/products").status_code == 200
    assert client.get("/products").status_code == 429
    sb.script_fault("GET", "/", "500", count=5)
    sb.reset()
    assert client.get("/products").status_code == 200


def test_stop_closes_keep_alive_connections() -> None:
    sandbox = Sandbox()
    sandbox.start()
    with _client(sandbox, timeout=1.0) as c:
        assert c.get("/products").status_code == 200
        sandbox.stop()
        with pytest.raises(httpx.TransportError):
            c.get("/products")


# --------------------------------------------------------------------------- issue 9 knobs


def test_applied_hang_applies_and_never_answers(sb: Sandbox) -> None:
    sb.configure(hang_seconds=0.3)
    with _client(sb, timeout=5.0) as c:
        _create(c, "H")
        sb.script_fault("PUT", "/products/H", "applied_hang")
        with pytest.raises((httpx.ReadTimeout, httpx.RemoteProtocolError)):
            c.put("/products/H", json={"product": {"qty": 9}})
        assert sb.state()["products"]["H"]["qty"] == 9
    assert (sb.request_log()[-1]["status"], sb.request_log()[-1]["fault"]) == (
        None,
        "applied_hang",
    )


def test_refused_category_is_a_422_that_applies_nothing(client: httpx.Client, sb: Sandbox) -> None:
    _create(client, "C")
    sb.configure(refused_categories=["BAD"])
    answer = client.put(
        "/products/C",
        json={"product": {"qty": 0, "categories": [{"code": "BAD", "name": "Nada"}]}},
    )
    assert answer.status_code == 422
    assert answer.json() == {"error": "Categoria não encontrada: BAD"}
    assert sb.state()["products"]["C"]["qty"] == 5
    assert client.put("/products/C", json={"product": {"qty": 0}}).status_code == 204
    refused_new = _create(client, "C2", categories=[{"code": "X", "name": "BAD"}])
    assert refused_new.status_code == 422
    assert "C2" not in sb.state()["products"]
    with pytest.raises(ValueError, match="refused_categories"):
        sb.configure(refused_categories="BAD")


def test_attribute_writes_to_a_linked_product_are_listed(client: httpx.Client, sb: Sandbox) -> None:
    _create(client, "L", variations=[{"sku": "L-1", "qty": 1}])
    sb.link_product("L")
    assert client.put("/products/L", json={"product": {"qty": 2, "price": 3.0}}).status_code == 204
    assert client.put("/variations/L-1", json={"variation": {"qty": 4}}).status_code == 204
    assert sb.state()["frozen_writes"] == []
    assert client.put("/products/L", json={"product": {"name": "novo"}}).status_code == 204
    assert client.put("/variations/L-1", json={"variation": {"ean": "1"}}).status_code == 204
    assert sb.state()["frozen_writes"] == [
        {"sku": "L", "fields": ["name"]},
        {"sku": "L-1", "fields": ["ean"]},
    ]


def test_retry_after_value_is_configurable(client: httpx.Client, sb: Sandbox) -> None:
    sb.configure(retry_after_header=True, retry_after_seconds=120)
    sb.script_fault("GET", "/products", "429")
    assert client.get("/products").headers["Retry-After"] == "120"


def test_admin_seeds_a_catalogue_without_requests(sb: Sandbox, client: httpx.Client) -> None:
    products = [
        {"sku": f"SEED-{i}", "name": f"seeded {i}", "qty": i, "price": 10.0 + i} for i in range(3)
    ]
    products[2]["variations"] = [{"sku": "SEED-2-P", "qty": 4, "price": 12.0}]
    seeded = client.post("/_sandbox/products", json={"products": products})
    assert seeded.status_code == 201
    assert seeded.json() == {"seeded": 3}
    assert client.get("/products/SEED-1").json()["qty"] == 1
    assert client.get("/variations/SEED-2-P").json()["qty"] == 4
    assert sb.state()["variations"]["SEED-2-P"]["parent_sku"] == "SEED-2"
    # set-up, not traffic: nothing in the request log but the two reads above
    assert [r["path"] for r in sb.request_log()] == ["/products/SEED-1", "/variations/SEED-2-P"]


def test_admin_seed_is_all_or_nothing_and_names_the_bad_product(
    sb: Sandbox, client: httpx.Client
) -> None:
    bad = client.post(
        "/_sandbox/products",
        json={"products": [{"sku": "OK-1", "name": "fine"}, {"name": "no sku"}]},
    )
    assert bad.status_code == 422
    assert bad.json()["error"].startswith("products[1]: ")
    assert "sku" in bad.json()["error"]
    assert sb.state()["products"] == {}
    assert client.post("/_sandbox/products", json=[{"sku": "X"}]).status_code == 400
    taken = client.post("/_sandbox/products", json={"products": [{"sku": "OK-1"}, {"sku": "OK-1"}]})
    assert taken.status_code == 422
    assert sb.state()["products"] == {}
