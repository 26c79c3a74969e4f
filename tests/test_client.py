"""The SkyHub client against the real emulator over real HTTP.

Every test starts its own emulator (``Sandbox``) on an ephemeral port and drives it only through
:class:`SkyHubClient`; what is asserted is what SkyHub (the emulator) saw and holds afterwards:
its state, its request log (method, raw path, status, body, arrival time ``t``) and the errors
the client raised. Failures are always caught as ``SkyHubError``: an httpx exception escaping
the client fails the test by itself.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from conftest import free_port, max_in_window, sandbox_fixture

from skysync.emulator import LINKED_DELETE_ERROR, Sandbox, SandboxConfig
from skysync.skyhub.buckets import bucket_for, bucket_rate, route_of
from skysync.skyhub.client import SkyHubClient
from skysync.skyhub.errors import (
    AuthenticationError,
    NotFound,
    PermanentError,
    RateLimited,
    RetryableError,
    ServerError,
    SkyHubError,
    TransportError,
    Unprocessable,
)
from skysync.skyhub.payloads import Order, QueuedOrder
from skysync.skyhub.ratelimit import RateLimiter

EMAIL = "loja@example.com"
API_KEY = "SECRET-API-KEY-123"
ACCOUNT_KEY = "SECRET-ACCOUNT-456"
WRONG_KEY = "SECRET-WRONG-KEY-789"
SECRETS = (API_KEY, ACCOUNT_KEY, WRONG_KEY)

SPACED_CODE = "Lojas Americanas-1517940500554-01"
SPACED_CODE_2 = "Lojas Americanas-1517940500554-02"
NFE_KEY = "35190112345678000190550010000012341000012345"
ISSUE_DATE = "2019-01-27T12:30:00-03:00"
REDIS_URL = "redis://127.0.0.1:6379/15"


# --------------------------------------------------------------------------- fixtures


def _config(**overrides: Any) -> SandboxConfig:
    """An emulator that checks our credentials; rate limits off unless a test turns them on."""
    values: dict[str, Any] = {
        "email": EMAIL,
        "api_key": API_KEY,
        "account_key": ACCOUNT_KEY,
        "rate_limits_enabled": False,
        "seed": 11,
    }
    values.update(overrides)
    return SandboxConfig(**values)


def _make_client(base_url: str, **kwargs: Any) -> SkyHubClient:
    kwargs.setdefault("email", EMAIL)
    kwargs.setdefault("api_key", API_KEY)
    kwargs.setdefault("account_key", ACCOUNT_KEY)
    kwargs.setdefault("timeout", httpx.Timeout(5.0))
    return SkyHubClient(base_url, **kwargs)


sb = sandbox_fixture(_config)


@pytest.fixture
def client(sb: Sandbox) -> Iterator[SkyHubClient]:
    with _make_client(sb.base_url) as c:
        yield c


@pytest.fixture
def make_client() -> Iterator[Callable[..., SkyHubClient]]:
    """Build extra clients in a test; all are closed at teardown."""
    made: list[SkyHubClient] = []

    def make(base_url: str, **kwargs: Any) -> SkyHubClient:
        c = _make_client(base_url, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def _product(sku: str, **fields: Any) -> dict[str, Any]:
    return {
        "sku": sku,
        "name": f"Produto {sku}",
        "description": f"Descrição de {sku}",
        "status": "enabled",
        "qty": 5,
        "price": 99.9,
        "brand": "Marca",
        **fields,
    }


def _last(sb: Sandbox) -> dict[str, Any]:
    return sb.request_log()[-1]


def _statuses(sb: Sandbox) -> list[int | None]:
    return [entry["status"] for entry in sb.request_log()]


def _order_status(sb: Sandbox, code: str) -> str:
    return sb.state()["orders"][code]["status"]["code"]


class _GrantLog:
    """Wraps a RateLimiter and notes when it let each request out, on the clock of the
    emulator's request log ("t" is ``time.monotonic()`` too: both run in this process)."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter
        self.grants: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    def acquire(self, bucket: str) -> float:
        waited = self.limiter.acquire(bucket)
        now = time.monotonic()
        with self._lock:
            self.grants.append((bucket, now))
        return waited


# Timer and sleep granularity between the limiter's clock and ours.
CLOCK_SLACK = 0.01


def _assert_paced(sb: Sandbox, logs: dict[str, _GrantLog], rate: int) -> None:
    """No one-second window holds more than ``rate`` PUTs: neither when the limiter let them
    out, nor when the emulator received them. The arrivals carry each request's time in
    transit (client, loopback, server thread), which the pacer cannot control: it is about 2 ms
    here, but in full runs on a busy machine one request is now and then held ~100 ms (seen
    between the limiter's grant and the emulator's clock, so scheduling, not pacing), which
    brings it that much closer to the request five slots later. So the arrival windows are
    shortened by the spread of the transit times measured in this very run."""
    grants: list[float] = []
    arrivals: list[float] = []
    transit: list[float] = []
    for path, log in logs.items():
        granted = [g for bucket, g in log.grants if bucket == "products:PUT"]
        arrived = [e["t"] for e in sb.request_log() if e["method"] == "PUT" and e["path"] == path]
        assert len(granted) == len(arrived)
        transit += [t - g for g, t in zip(granted, arrived, strict=True)]
        grants += granted
        arrivals += arrived
    assert min(transit) > 0
    assert max_in_window(grants, 1.0 - CLOCK_SLACK) <= rate
    spread = max(transit) - min(transit)
    assert max_in_window(arrivals, 1.0 - CLOCK_SLACK - spread) <= rate, f"transit {transit}"
    assert max(arrivals) - min(arrivals) >= 2.9  # 20 requests at 5/s span at least 3 s


# --------------------------------------------------------------------------- products


def test_create_product_is_201_and_stored_wrapped(sb: Sandbox, client: SkyHubClient) -> None:
    product = _product("CAMISA-1", ean="7891234567895", weight=0.3)

    assert client.create_product(product) is None

    entry = _last(sb)
    assert (entry["method"], entry["path"], entry["status"]) == ("POST", "/products", 201)
    assert entry["body"] == {"product": product}
    stored = sb.state()["products"]["CAMISA-1"]
    for key, value in product.items():
        assert stored[key] == value


def test_update_product_changes_only_the_given_fields(sb: Sandbox, client: SkyHubClient) -> None:
    client.create_product(_product("CAMISA-2", qty=5, price=99.9))
    before = sb.state()["products"]["CAMISA-2"]

    client.update_product("CAMISA-2", {"qty": 3, "price": 89.9})

    entry = _last(sb)
    assert (entry["method"], entry["path"], entry["status"]) == ("PUT", "/products/CAMISA-2", 204)
    assert entry["body"] == {"product": {"qty": 3, "price": 89.9}}
    after = sb.state()["products"]["CAMISA-2"]
    assert after["qty"] == 3
    assert after["price"] == 89.9
    unchanged = {k: v for k, v in before.items() if k not in ("qty", "price")}
    assert {k: after[k] for k in unchanged} == unchanged


def test_get_product_is_linked_after_create_by_default(sb: Sandbox, client: SkyHubClient) -> None:
    client.create_product(_product("CAMISA-3"))

    got = client.get_product("CAMISA-3")

    assert got["sku"] == "CAMISA-3"
    assert got["name"] == "Produto CAMISA-3"
    assert got["associations"] == [{"platform": "B2W", "status": "linked"}]
    assert got["variations"] == []
    assert _last(sb)["status"] == 200


def test_get_product_is_pending_when_never_linked() -> None:
    with Sandbox(_config(link_delay=None)) as sb, _make_client(sb.base_url) as client:
        client.create_product(_product("CAMISA-4"))

        got = client.get_product("CAMISA-4")

        assert got["associations"] == [{"platform": "B2W", "status": "pending"}]


def test_delete_linked_product_is_refused_with_skyhubs_message(
    sb: Sandbox, client: SkyHubClient
) -> None:
    client.create_product(_product("CAMISA-5"))

    with pytest.raises(SkyHubError) as info:
        client.delete_product("CAMISA-5")

    exc = info.value
    assert type(exc) is Unprocessable
    assert isinstance(exc, PermanentError)
    assert exc.status == 422
    assert exc.message == LINKED_DELETE_ERROR
    assert (exc.method, exc.path) == ("DELETE", "/products/CAMISA-5")
    assert "CAMISA-5" in sb.state()["products"]


def test_delete_unlinked_product_removes_it() -> None:
    with Sandbox(_config(link_delay=None)) as sb, _make_client(sb.base_url) as client:
        client.create_product(_product("CAMISA-6"))

        client.delete_product("CAMISA-6")

        entry = _last(sb)
        assert (entry["method"], entry["path"], entry["status"]) == (
            "DELETE",
            "/products/CAMISA-6",
            204,
        )
        assert "CAMISA-6" not in sb.state()["products"]
        with pytest.raises(SkyHubError) as info:
            client.get_product("CAMISA-6")
        assert type(info.value) is NotFound


def test_skus_with_reserved_characters_are_one_path_segment(
    sb: Sandbox, client: SkyHubClient
) -> None:
    sku = "KIT 2/3 #A?b=c&d%"
    client.create_product(_product(sku, qty=1))

    client.update_product(sku, {"qty": 8})
    got = client.get_product(sku)

    assert got["sku"] == sku
    assert got["qty"] == 8
    assert sb.state()["products"][sku]["qty"] == 8
    put = next(e for e in sb.request_log() if e["method"] == "PUT")
    assert put["path"] == "/products/KIT%202%2F3%20%23A%3Fb%3Dc%26d%25"
    assert put["status"] == 204


def test_sku_made_of_dots_is_still_one_path_segment(sb: Sandbox, client: SkyHubClient) -> None:
    """BUG: segment(".") leaves the dot as is and httpx removes dot segments (RFC 3986), so
    GET /products/. goes out as GET /products/ and returns the product LIST as if it were the
    product; ".." climbs to "/"."""
    client.create_product(_product("."))

    got = client.get_product(".")

    entry = _last(sb)
    assert entry["route"] == "/products/{sku}", f"sent as GET {entry['path']}"
    assert got.get("sku") == "."


def test_list_products_pages_by_cursor(sb: Sandbox, client: SkyHubClient) -> None:
    skus = [f"SKU-{i:03d}" for i in range(60)]
    for sku in skus:
        client.create_product(_product(sku, qty=1))

    first = client.list_products(per_page=25)
    assert [p["sku"] for p in first.products] == skus[:25]
    assert first.total == 60
    assert first.next_cursor
    second = client.list_products(per_page=25, cursor=first.next_cursor)
    assert [p["sku"] for p in second.products] == skus[25:50]
    assert second.next_cursor
    third = client.list_products(per_page=25, cursor=second.next_cursor)
    assert [p["sku"] for p in third.products] == skus[50:]
    assert third.next_cursor is None
    assert all(p["associations"][0]["status"] == "linked" for p in first.products)

    by_page = client.list_products(page=2, per_page=25)
    assert [p["sku"] for p in by_page.products] == skus[25:50]


def test_iter_products_follows_next_until_the_end(sb: Sandbox, client: SkyHubClient) -> None:
    skus = [f"ITEM-{i:03d}" for i in range(60)]
    for sku in skus:
        client.create_product(_product(sku, qty=2))
    before = len(sb.request_log())

    listed = [p["sku"] for p in client.iter_products(per_page=25)]

    assert listed == skus
    gets = sb.request_log()[before:]
    assert [(e["method"], e["route"], e["status"]) for e in gets] == [("GET", "/products", 200)] * 3
    assert "cursor=" not in gets[0]["path"]
    assert "per_page=25" in gets[0]["path"]
    assert all("cursor=" in e["path"] for e in gets[1:])


def test_variations_create_update_get(sb: Sandbox, client: SkyHubClient) -> None:
    client.create_product(_product("TENIS", variation_attributes=["tamanho"]))
    variation = {
        "sku": "TENIS 42",
        "qty": 2,
        "price": 199.9,
        "ean": "7891234500017",
        "specifications": [{"key": "tamanho", "value": "42"}],
    }

    client.create_variation("TENIS", variation)
    created = _last(sb)
    assert (created["method"], created["path"], created["status"]) == (
        "POST",
        "/products/TENIS/variations",
        201,
    )
    assert created["body"] == {"variation": variation}

    client.update_variation("TENIS 42", {"qty": 7})
    updated = _last(sb)
    assert (updated["method"], updated["path"], updated["status"]) == (
        "PUT",
        "/variations/TENIS%2042",
        204,
    )
    assert updated["body"] == {"variation": {"qty": 7}}

    got = client.get_variation("TENIS 42")
    assert got["sku"] == "TENIS 42"
    assert got["qty"] == 7
    assert got["price"] == 199.9
    assert got["specifications"] == variation["specifications"]
    stored = sb.state()["variations"]["TENIS 42"]
    assert stored["parent_sku"] == "TENIS"
    assert stored["qty"] == 7
    assert [v["sku"] for v in client.get_product("TENIS")["variations"]] == ["TENIS 42"]


def test_product_sync_errors(sb: Sandbox, client: SkyHubClient) -> None:
    assert client.product_sync_errors() == {"error_qty": 0, "errors": []}
    assert _last(sb)["path"] == "/sync_errors/products"

    assert client.product_sync_errors("imagem") == {"error_qty": 0, "errors": []}
    entry = _last(sb)
    assert entry["path"] == "/sync_errors/products?error_category_code=imagem"
    assert entry["status"] == 200


# --------------------------------------------------------------------------- orders


def test_next_queued_order_parses_the_order(sb: Sandbox, client: SkyHubClient) -> None:
    seeded = sb.seed_order({"code": SPACED_CODE, "status": "payment_received"})

    queued = client.next_queued_order()

    assert isinstance(queued, QueuedOrder)
    assert queued.problem is None
    assert isinstance(queued.order, Order)
    assert queued.code == SPACED_CODE
    assert queued.status_code == "payment_received"
    assert queued.order.code == SPACED_CODE
    assert queued.order.status.type == "APPROVED"
    assert queued.order.status.label == "Aprovado"
    assert queued.order.channel == "Lojas Americanas"
    assert queued.order.items[0].id == seeded["items"][0]["id"]
    assert queued.raw == seeded
    assert _last(sb)["status"] == 200


def test_next_queued_order_is_none_when_the_queue_is_empty(
    sb: Sandbox, client: SkyHubClient
) -> None:
    assert client.next_queued_order() is None
    entry = _last(sb)
    assert (entry["method"], entry["path"], entry["status"]) == ("GET", "/queues/orders", 204)


def test_ack_order_removes_it_from_the_queue_for_good() -> None:
    # visibility_timeout=0: an order read but not acknowledged comes straight back.
    with Sandbox(_config(visibility_timeout=0.0)) as sb, _make_client(sb.base_url) as client:
        sb.seed_order({"code": SPACED_CODE, "status": "payment_received"})
        first = client.next_queued_order()
        again = client.next_queued_order()
        assert first is not None and again is not None
        assert first.code == again.code == SPACED_CODE

        client.ack_order(SPACED_CODE)

        entry = _last(sb)
        assert (entry["method"], entry["path"], entry["status"]) == (
            "DELETE",
            "/queues/orders/Lojas%20Americanas-1517940500554-01",
            204,
        )
        assert sb.state()["queue"] == []
        assert client.next_queued_order() is None
        assert client.next_queued_order() is None


def test_order_code_with_spaces_through_get_action_and_ack(
    sb: Sandbox, client: SkyHubClient
) -> None:
    sb.seed_order({"code": SPACED_CODE, "status": "payment_received"})
    sb.seed_order({"code": SPACED_CODE_2, "status": "payment_received"})

    got = client.get_order(SPACED_CODE)
    assert got["code"] == SPACED_CODE
    assert got["status"]["code"] == "payment_received"

    client.invoice_order(SPACED_CODE, NFE_KEY, ISSUE_DATE)
    entry = _last(sb)
    assert entry["path"] == "/orders/Lojas%20Americanas-1517940500554-01/invoice"
    assert entry["status"] == 201
    assert _order_status(sb, SPACED_CODE) == "order_invoiced"
    assert _order_status(sb, SPACED_CODE_2) == "payment_received"

    client.ack_order(SPACED_CODE)
    assert sb.state()["queue"] == [SPACED_CODE_2]


def test_order_actions_through_a_valid_chain(sb: Sandbox, client: SkyHubClient) -> None:
    code = "Submarino-2233445566-01"
    sb.seed_order({"code": code, "status": "payment_received"})

    client.invoice_order(code, NFE_KEY, ISSUE_DATE)
    order = sb.state()["orders"][code]
    assert order["status"]["code"] == "order_invoiced"
    assert order["invoices"][0]["key"] == NFE_KEY
    assert order["invoices"][0]["issue_date"] == ISSUE_DATE
    assert _last(sb)["body"] == {
        "status": "order_invoiced",
        "invoice": {"key": NFE_KEY, "issue_date": ISSUE_DATE},
    }

    shipment = {
        "code": "ENVIO-1",
        "delivered_carrier_date": "2019-01-28T10:00:00-03:00",
        "items": [{"sku": "SKYSYNC-DEMO-1", "qty": 1}],
        "track": {
            "code": "BR123456789BR",
            "carrier": "Correios",
            "method": "PAC",
            "url": "https://rastreamento.correios.com.br/",
        },
    }
    client.ship_order(code, shipment)
    order = sb.state()["orders"][code]
    assert order["status"]["code"] == "order_shipped"
    assert order["shipments"] == [shipment]
    assert order["shipped_date"] == "2019-01-28T10:00:00-03:00"

    client.shipment_exception(code, "2019-01-29T09:00:00-03:00", "Destinatário ausente")
    order = sb.state()["orders"][code]
    assert order["status"]["code"] == "shipment_exception"
    assert order["shipment_exceptions"] == [
        {"occurrence_date": "2019-01-29T09:00:00-03:00", "observation": "Destinatário ausente"}
    ]

    client.deliver_order(code, "2019-01-30T15:00:00-03:00")
    order = sb.state()["orders"][code]
    assert order["status"]["code"] == "complete"
    assert order["delivered_date"] == "2019-01-30T15:00:00-03:00"

    actions = [e for e in sb.request_log() if e["method"] == "POST"]
    assert [(e["route"].rsplit("/", 1)[1], e["status"]) for e in actions] == [
        ("invoice", 201),
        ("shipments", 201),
        ("shipment_exception", 201),
        ("delivery", 201),
    ]
    # each action re-enqueues the order with its new status
    assert sb.state()["queue"] == [code]
    queued = client.next_queued_order()
    assert queued is not None and queued.status_code == "complete"


def test_cancel_order(sb: Sandbox, client: SkyHubClient) -> None:
    sb.seed_order({"code": SPACED_CODE, "status": "payment_received"})

    client.cancel_order(SPACED_CODE)

    assert _last(sb)["body"] == {"status": "order_canceled"}
    assert _order_status(sb, SPACED_CODE) == "order_canceled"
    assert sb.state()["orders"][SPACED_CODE]["status"]["type"] == "CANCELED"


# --------------------------------------------------------------------------- errors


def test_wrong_api_key_is_authentication_error(sb: Sandbox, make_client: Any) -> None:
    bad = make_client(sb.base_url, api_key=WRONG_KEY)

    with pytest.raises(SkyHubError) as info:
        bad.get_product("QUALQUER")

    exc = info.value
    assert type(exc) is AuthenticationError
    assert not isinstance(exc, RetryableError | PermanentError)
    assert exc.status == 401
    assert "X-Api-Key" in exc.message
    assert (exc.method, exc.path) == ("GET", "/products/QUALQUER")
    assert _statuses(sb) == [401]


def test_unknown_sku_is_not_found(sb: Sandbox, client: SkyHubClient) -> None:
    for call in (
        lambda: client.get_product("NAO-EXISTE"),
        lambda: client.update_product("NAO-EXISTE", {"qty": 1}),
        lambda: client.get_variation("NAO-EXISTE"),
        lambda: client.get_order("Lojas Americanas-0-01"),
    ):
        with pytest.raises(SkyHubError) as info:
            call()
        assert type(info.value) is NotFound
        assert isinstance(info.value, PermanentError)
        assert info.value.status == 404
        assert "não encontrad" in info.value.message
    assert _statuses(sb) == [404, 404, 404, 404]


def test_duplicate_create_is_unprocessable_with_skyhubs_text(client: SkyHubClient) -> None:
    client.create_product(_product("DUP-1"))

    with pytest.raises(SkyHubError) as info:
        client.create_product(_product("DUP-1"))

    exc = info.value
    assert type(exc) is Unprocessable
    assert exc.status == 422
    assert exc.message == "Produto com SKU 'DUP-1' já existe"
    assert str(exc) == "POST /products -> 422: Produto com SKU 'DUP-1' já existe"


def test_invalid_order_transition_is_unprocessable(sb: Sandbox, client: SkyHubClient) -> None:
    sb.seed_order({"code": SPACED_CODE, "status": "payment_received"})

    with pytest.raises(SkyHubError) as info:
        client.deliver_order(SPACED_CODE, "2019-01-30T15:00:00-03:00")

    exc = info.value
    assert type(exc) is Unprocessable
    assert exc.status == 422
    assert exc.message == (
        f"Transição de status inválida para o pedido '{SPACED_CODE}': "
        "de 'payment_received' para 'complete'"
    )
    assert _order_status(sb, SPACED_CODE) == "payment_received"

    client.invoice_order(SPACED_CODE, NFE_KEY)
    with pytest.raises(SkyHubError) as repeat:
        client.invoice_order(SPACED_CODE, NFE_KEY)
    assert type(repeat.value) is Unprocessable
    assert "já está em 'order_invoiced'" in repeat.value.message


def test_bad_request_is_permanent_error(sb: Sandbox, client: SkyHubClient) -> None:
    with pytest.raises(SkyHubError) as info:
        client.list_products(cursor="not-a-cursor!")
    exc = info.value
    assert type(exc) is PermanentError
    assert not isinstance(exc, RetryableError)
    assert exc.status == 400
    assert exc.message == "Parâmetro 'cursor' inválido"

    with pytest.raises(SkyHubError) as deep:
        client.list_products(page=401, per_page=25)
    assert type(deep.value) is PermanentError
    assert deep.value.status == 400
    assert "10.000" in deep.value.message
    assert _statuses(sb) == [400, 400]


@pytest.mark.parametrize(
    ("fault", "status", "text"),
    [("500", 500, "Internal Server Error"), ("503", 503, "Service Unavailable")],
)
def test_scripted_5xx_is_server_error(
    sb: Sandbox, client: SkyHubClient, fault: str, status: int, text: str
) -> None:
    client.create_product(_product("P5XX"))
    sb.script_fault("PUT", "/products/P5XX", fault)

    with pytest.raises(SkyHubError) as info:
        client.update_product("P5XX", {"qty": 1})

    exc = info.value
    assert type(exc) is ServerError
    assert isinstance(exc, RetryableError)
    assert exc.status == status
    assert exc.message == text
    assert sb.state()["products"]["P5XX"]["qty"] == 5  # not applied
    # the fault was used up: the same request now goes through
    client.update_product("P5XX", {"qty": 1})
    assert sb.state()["products"]["P5XX"]["qty"] == 1


def test_502_html_page_is_a_short_server_error(sb: Sandbox, client: SkyHubClient) -> None:
    sb.script_fault("GET", "/queues/orders", "502")

    with pytest.raises(SkyHubError) as info:
        client.next_queued_order()

    exc = info.value
    assert type(exc) is ServerError
    assert exc.status == 502
    assert "HTML" in exc.message
    assert "502 Bad Gateway" in exc.message
    assert len(exc.message) < 100
    assert len(str(exc)) < 150
    for text in (exc.message, str(exc)):
        assert "<" not in text
        assert "nginx" not in text


def test_timeout_is_transport_error() -> None:
    with (
        Sandbox(_config(hang_seconds=2.0)) as sb,
        _make_client(sb.base_url, timeout=httpx.Timeout(5.0, read=0.3)) as client,
    ):
        client.create_product(_product("SLOW"))
        sb.script_fault("PUT", "/products/SLOW", "timeout")

        started = time.monotonic()
        with pytest.raises(SkyHubError) as info:
            client.update_product("SLOW", {"qty": 9})
        elapsed = time.monotonic() - started

        exc = info.value
        assert type(exc) is TransportError
        assert isinstance(exc, RetryableError)
        assert exc.status is None
        assert "timed out" in exc.message
        assert not isinstance(exc.__cause__, SkyHubError)
        assert elapsed < 1.5
        assert sb.state()["products"]["SLOW"]["qty"] == 5
        # the client is still usable afterwards
        client.update_product("SLOW", {"qty": 9})
        assert sb.state()["products"]["SLOW"]["qty"] == 9


def test_lost_answer_is_transport_error_but_applied(sb: Sandbox, client: SkyHubClient) -> None:
    client.create_product(_product("LOST"))
    sb.script_fault("PUT", "/products/LOST", "lost")

    with pytest.raises(SkyHubError) as info:
        client.update_product("LOST", {"qty": 42})

    exc = info.value
    assert type(exc) is TransportError
    assert "may have been applied" in exc.message
    assert sb.state()["products"]["LOST"]["qty"] == 42
    entry = _last(sb)
    assert (entry["fault"], entry["status"]) == ("lost", None)

    # a lost create: applied, so trying it again meets the duplicate
    sb.script_fault("POST", "/products", "lost")
    with pytest.raises(SkyHubError) as lost_create:
        client.create_product(_product("LOST-2"))
    assert type(lost_create.value) is TransportError
    assert "LOST-2" in sb.state()["products"]
    with pytest.raises(SkyHubError) as again:
        client.create_product(_product("LOST-2"))
    assert type(again.value) is Unprocessable


def test_dropped_connection_is_transport_error_not_applied(
    sb: Sandbox, client: SkyHubClient
) -> None:
    client.create_product(_product("DROP"))
    sb.script_fault("PUT", "/products/DROP", "drop")

    with pytest.raises(SkyHubError) as info:
        client.update_product("DROP", {"qty": 42})

    assert type(info.value) is TransportError
    assert sb.state()["products"]["DROP"]["qty"] == 5
    assert (_last(sb)["fault"], _last(sb)["status"]) == ("drop", None)
    client.update_product("DROP", {"qty": 42})
    assert sb.state()["products"]["DROP"]["qty"] == 42


def test_connection_refused_is_transport_error(make_client: Any) -> None:
    client = make_client(f"http://127.0.0.1:{free_port()}")

    for call in (
        lambda: client.get_product("X"),
        lambda: client.update_product("X", {"qty": 1}),
        lambda: client.next_queued_order(),
    ):
        with pytest.raises(SkyHubError) as info:
            call()
        exc = info.value
        assert type(exc) is TransportError
        assert "ConnectError" in exc.message
        assert isinstance(exc.__cause__, httpx.ConnectError)


def test_garbled_queue_answer_keeps_the_raw_order(sb: Sandbox, client: SkyHubClient) -> None:
    sb.seed_order({"code": "TXT-1", "status": ["not", "an", "object"]}, raw=True)

    queued = client.next_queued_order()

    assert queued is not None
    assert queued.order is None
    assert queued.code == "TXT-1"
    assert queued.raw == {"code": "TXT-1", "status": ["not", "an", "object"]}
    assert queued.problem is not None and "status" in queued.problem


# --------------------------------------------------------------------------- 429


def test_429_without_waits_raises_rate_limited(sb: Sandbox, make_client: Any) -> None:
    client = make_client(sb.base_url, max_rate_limit_waits=0)
    sb.script_fault("GET", "/queues/orders", "429")

    with pytest.raises(SkyHubError) as info:
        client.next_queued_order()

    exc = info.value
    assert type(exc) is RateLimited
    assert not isinstance(exc, RetryableError | PermanentError)
    assert exc.status == 429
    assert exc.retry_after is None
    assert "Limite de requisições excedido" in exc.message
    assert _statuses(sb) == [429]


def test_429_retry_after_header_is_reported() -> None:
    with (
        Sandbox(_config(retry_after_header=True)) as sb,
        _make_client(sb.base_url, max_rate_limit_waits=0) as client,
    ):
        sb.script_fault("GET", "/products", "429")

        with pytest.raises(SkyHubError) as info:
            client.list_products()

        assert type(info.value) is RateLimited
        assert info.value.retry_after == 1.0
        assert info.value.status == 429


@pytest.mark.slow
def test_429_is_waited_out_then_succeeds(sb: Sandbox, make_client: Any) -> None:
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    client = make_client(sb.base_url, sleep=sleep)
    client.create_product(_product("WAIT"))
    sb.script_fault("PUT", "/products/WAIT", "429")

    client.update_product("WAIT", {"qty": 11})

    puts = [e for e in sb.request_log() if e["method"] == "PUT"]
    assert [e["status"] for e in puts] == [429, 204]
    assert len(slept) == 1
    assert 0 < slept[0] <= 1.02
    assert puts[1]["t"] - puts[0]["t"] >= slept[0] - 0.01
    assert sb.state()["products"]["WAIT"]["qty"] == 11


def test_429_with_retry_after_waits_that_long() -> None:
    slept: list[float] = []
    with (
        Sandbox(_config(retry_after_header=True)) as sb,
        _make_client(sb.base_url, sleep=slept.append) as client,
    ):
        sb.script_fault("GET", "/orders/", "429", count=2)
        sb.seed_order({"code": SPACED_CODE, "status": "payment_received"})

        assert client.get_order(SPACED_CODE)["code"] == SPACED_CODE

        assert slept == [1.0, 1.0]
        assert _statuses(sb) == [429, 429, 200]


def test_429_waits_are_capped(sb: Sandbox, make_client: Any) -> None:
    slept: list[float] = []
    client = make_client(sb.base_url, max_rate_limit_waits=2, sleep=slept.append)
    sb.script_fault("GET", "/products/", "429", count=5)

    with pytest.raises(SkyHubError) as info:
        client.get_product("ANY")

    assert type(info.value) is RateLimited
    assert len(slept) == 2
    assert _statuses(sb) == [429, 429, 429]


@pytest.mark.slow
def test_real_rate_limit_on_a_one_per_second_bucket_is_waited_out(make_client: Any) -> None:
    with Sandbox(_config(rate_limits_enabled=True)) as sb:  # SkyHub's limits: orders GET 1/s
        client = make_client(sb.base_url)
        sb.seed_order({"code": SPACED_CODE, "status": "payment_received"})

        assert client.get_order(SPACED_CODE)["code"] == SPACED_CODE
        assert client.get_order(SPACED_CODE)["code"] == SPACED_CODE

        statuses = _statuses(sb)
        assert statuses[0] == 200
        assert statuses[-1] == 200
        assert 429 in statuses
        ok = [e["t"] for e in sb.request_log() if e["status"] == 200]
        assert ok[1] - ok[0] >= 1.0


@pytest.mark.slow
def test_one_wait_is_enough_after_a_429_on_a_sliding_window(make_client: Any) -> None:
    """BUG: without Retry-After the client waits for the next *wall-clock* second
    (client.py, ``1.0 - (time.time() % 1.0) + 0.01``), not for a one-second window to pass.
    Against SkyHub's per-second limit as the emulator models it (a sliding one-second window),
    a request refused at x.06 s whose window opened at x.05 s is retried at (x+1).01 s, still
    inside the window, and is refused again: one 429 costs two waits and an extra request."""
    with Sandbox(_config(rate_limits_enabled=True)) as sb:  # orders GET: 1/s
        client = make_client(sb.base_url, max_rate_limit_waits=1)
        sb.seed_order({"code": SPACED_CODE, "status": "payment_received"})
        time.sleep((1.05 - time.time() % 1.0) % 1.0)  # start just after a wall-clock second

        client.get_order(SPACED_CODE)
        try:
            client.get_order(SPACED_CODE)
            error: SkyHubError | None = None
        except SkyHubError as exc:
            error = exc

        assert _statuses(sb).count(429) == 1, _statuses(sb)
        assert error is None


# --------------------------------------------------------------------------- queue parsing


def test_malformed_queued_order_comes_back_raw_with_its_problem(
    sb: Sandbox, client: SkyHubClient
) -> None:
    sb.seed_order({"code": "X-1", "status": 42}, raw=True)

    queued = client.next_queued_order()

    assert isinstance(queued, QueuedOrder)
    assert queued.order is None
    assert queued.raw == {"code": "X-1", "status": 42}
    assert queued.code == "X-1"
    assert queued.status_code is None
    assert queued.problem is not None
    assert queued.problem.startswith("status")


def test_queued_order_without_status(sb: Sandbox, client: SkyHubClient) -> None:
    raw = {"code": "X-2", "channel": "Americanas", "items": []}
    sb.seed_order(raw, raw=True)

    queued = client.next_queued_order()

    assert queued is not None
    assert queued.order is None
    assert queued.raw == raw
    assert queued.code == "X-2"
    assert queued.problem is not None
    assert "status" in queued.problem
    assert "required" in queued.problem.lower()


def test_queued_order_with_a_bad_item_names_the_field(sb: Sandbox, client: SkyHubClient) -> None:
    raw = {
        "code": "X-3",
        "status": {"code": "payment_received"},
        "items": [{"id": "A", "qty": 1}, {"id": "B", "qty": "muitos"}],
    }
    sb.seed_order(raw, raw=True)

    queued = client.next_queued_order()

    assert queued is not None
    assert queued.order is None
    assert queued.raw == raw
    assert queued.status_code == "payment_received"
    assert queued.problem is not None
    assert "items.1.qty" in queued.problem


def test_queued_order_with_a_bare_status_code_parses(sb: Sandbox, client: SkyHubClient) -> None:
    sb.seed_order({"code": "X-4", "status": "order_canceled"}, raw=True)

    queued = client.next_queued_order()

    assert queued is not None
    assert queued.problem is None
    assert queued.order is not None
    assert queued.status_code == "order_canceled"
    assert queued.raw == {"code": "X-4", "status": "order_canceled"}


def test_queued_order_keeps_unknown_fields(sb: Sandbox, client: SkyHubClient) -> None:
    sb.seed_order(
        {
            "code": SPACED_CODE,
            "status": {"code": "payment_received", "label": "Aprovado", "type": "APPROVED"},
            "has_incident": False,
            "marketplace_data": {"lote": 7, "origem": "app"},
            "items": [{"id": "SKU-1", "qty": 2, "special_price": 10.0, "gift_wrap": True}],
        }
    )

    queued = client.next_queued_order()

    assert queued is not None and queued.order is not None
    extra = queued.order.model_extra or {}
    assert extra["marketplace_data"] == {"lote": 7, "origem": "app"}
    assert extra["has_incident"] is False
    assert "customer" in extra  # a SkyHub field the model does not type
    dumped = queued.order.model_dump()
    assert dumped["marketplace_data"] == {"lote": 7, "origem": "app"}
    assert dumped["items"][0]["gift_wrap"] is True
    assert dumped["shipping_address"]["city"] == "Rio de Janeiro"


# --------------------------------------------------------------------------- secrets


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                stack.append(linked)
        stack.extend(arg for arg in current.args if isinstance(arg, BaseException))


def _assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked in {where}"


def test_secrets_never_reach_logs_errors_or_repr(
    caplog: pytest.LogCaptureFixture, make_client: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    # other tests' logging set-up quiets these; this test wants every line they can write
    for name in ("httpx", "httpcore", "skysync"):
        caplog.set_level(logging.DEBUG, logger=name)
    errors: list[SkyHubError] = []

    def expect_error(call: Callable[[], object]) -> None:
        with pytest.raises(SkyHubError) as info:
            call()
        errors.append(info.value)

    with Sandbox(_config(hang_seconds=1.0, retry_after_header=True)) as sb:
        client = make_client(sb.base_url, timeout=httpx.Timeout(5.0, read=0.3))
        wrong = make_client(sb.base_url, api_key=WRONG_KEY)
        refused = make_client(f"http://127.0.0.1:{free_port()}")

        # successes
        client.create_product(_product("SEGREDO"))
        client.update_product("SEGREDO", {"qty": 1})
        client.get_product("SEGREDO")
        sb.seed_order({"code": SPACED_CODE, "status": "payment_received"})
        assert client.next_queued_order() is not None
        client.ack_order(SPACED_CODE)
        # failures of every kind
        expect_error(lambda: wrong.get_product("SEGREDO"))  # 401
        sb.script_fault("GET", "/products/SEGREDO", "500")
        expect_error(lambda: client.get_product("SEGREDO"))
        sb.script_fault("GET", "/products/SEGREDO", "502")
        expect_error(lambda: client.get_product("SEGREDO"))
        sb.script_fault("PUT", "/products/SEGREDO", "timeout")
        expect_error(lambda: client.update_product("SEGREDO", {"qty": 2}))
        sb.script_fault("PUT", "/products/SEGREDO", "lost")
        expect_error(lambda: client.update_product("SEGREDO", {"qty": 3}))
        sb.script_fault("PUT", "/products/SEGREDO", "drop")
        expect_error(lambda: client.update_product("SEGREDO", {"qty": 4}))
        expect_error(lambda: client.get_product("NADA"))  # 404
        expect_error(lambda: client.create_product(_product("SEGREDO")))  # 422
        sb.script_fault("GET", "/products/SEGREDO", "429", count=10)
        expect_error(
            lambda: make_client(sb.base_url, max_rate_limit_waits=0).get_product("SEGREDO")
        )
        expect_error(lambda: refused.get_product("SEGREDO"))

        assert {type(e) for e in errors} == {
            AuthenticationError,
            ServerError,
            TransportError,
            NotFound,
            Unprocessable,
            RateLimited,
        }
        for error in errors:
            for linked in _exception_chain(error):
                _assert_no_secret(str(linked), f"str({linked!r:.60})")
                _assert_no_secret(repr(linked), "repr of an exception")
                for arg in linked.args:
                    _assert_no_secret(repr(arg), "an exception argument")
            _assert_no_secret(repr(vars(error)), "the attributes of an error")
        for c in (client, wrong, refused):
            _assert_no_secret(repr(c), "repr(client)")
            _assert_no_secret(str(c), "str(client)")

    assert "PUT /products/SEGREDO -> 204" in caplog.text  # the client's own debug lines
    assert "httpcore" in {r.name.split(".")[0] for r in caplog.records}  # transport debug too
    _assert_no_secret(caplog.text, "the log")
    for record in caplog.records:
        _assert_no_secret(repr(record.args), f"the args of a {record.name} log record")


# --------------------------------------------------------------------------- rate limiter


@pytest.mark.slow
@pytest.mark.parametrize("storage_url", ["memory://", REDIS_URL], ids=["memory", "redis"])
def test_limiter_keeps_puts_under_the_rate(
    storage_url: str, make_limiter: Any, make_client: Any
) -> None:
    with Sandbox(_config(rate_limits_enabled=True, rate_limit=9)) as sb:
        limiter = _GrantLog(make_limiter(5, storage_url))
        client = make_client(sb.base_url, limiter=limiter)
        client.create_product(_product("PACED"))

        for qty in range(20):
            client.update_product("PACED", {"qty": qty})

        puts = [e for e in sb.request_log() if e["method"] == "PUT"]
        assert len(puts) == 20
        assert all(e["status"] == 204 for e in puts), _statuses(sb)
        assert 429 not in _statuses(sb)
        _assert_paced(sb, {"/products/PACED": limiter}, 5)
        assert sb.state()["products"]["PACED"]["qty"] == 19


@pytest.mark.slow
def test_two_clients_sharing_a_redis_limiter_stay_under_the_rate(
    make_limiter: Any, make_client: Any
) -> None:
    namespace = f"skysync:test:{uuid.uuid4().hex}"
    with Sandbox(_config(rate_limits_enabled=True, rate_limit=9)) as sb:
        # two limiter objects on one namespace: two worker processes sharing Redis
        logs = [_GrantLog(make_limiter(5, REDIS_URL, namespace)) for _ in range(2)]
        clients = [make_client(sb.base_url, limiter=log) for log in logs]
        for n in range(2):
            clients[0].create_product(_product(f"SHARED-{n}"))
        failures: list[BaseException] = []
        start = threading.Barrier(2)

        def work(n: int) -> None:
            try:
                start.wait()
                for qty in range(10):
                    clients[n].update_product(f"SHARED-{n}", {"qty": qty})
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)

        assert not any(t.is_alive() for t in threads)
        assert failures == []
        puts = [e for e in sb.request_log() if e["method"] == "PUT"]
        assert len(puts) == 20
        assert {e["path"] for e in puts} == {"/products/SHARED-0", "/products/SHARED-1"}
        assert all(e["status"] == 204 for e in puts), _statuses(sb)
        _assert_paced(sb, {f"/products/SHARED-{n}": logs[n] for n in range(2)}, 5)
        state = sb.state()["products"]
        assert state["SHARED-0"]["qty"] == state["SHARED-1"]["qty"] == 9


@pytest.mark.parametrize(
    ("bucket", "pace"),
    [
        ("products:GET", 8.5),
        ("products:PUT", 8.5),
        ("variations:PUT", 8.5),
        ("variations:DELETE", 8.5),
        ("queues:GET", 8.5),
        ("queues:DELETE", 8.5),
        ("orders/invoice:POST", 8.5),
        ("orders:GET:one", 0.9),
        ("orders:GET:list", 0.9),
        ("other:sync_errors:GET", 0.9),
        # SkyHub: "Variations PUT/DELETE 9/s ... everything else 1/s" (skyhub-api.md section 5)
        ("variations:GET", 0.9),
    ],
)
def test_bucket_rate(bucket: str, pace: float) -> None:
    assert bucket_rate(bucket, 8.5) == pace
    assert bucket_rate(bucket, 0.5) == 0.5  # never faster than asked


@pytest.mark.slow
def test_limiter_with_bucket_rate_keeps_variation_reads_under_skyhubs_limit(
    make_client: Any,
) -> None:
    """BUG: SkyHub allows GET /variations/{sku} at 1/s (skyhub-api.md section 5: only Variations
    PUT/DELETE are 9/s, "everything else 1/s"; the emulator agrees), but
    bucket_rate("variations:GET", r) returns r: SLOW_BUCKET_PREFIXES holds only "orders:GET" and
    "other:". A limiter paced by bucket_rate lets the second read out at once and SkyHub
    answers 429."""
    with Sandbox(_config(rate_limits_enabled=True)) as sb:  # SkyHub's own limits
        limiter = RateLimiter(
            8.5,
            namespace=f"skysync:test:{uuid.uuid4().hex}",
            rate_for=lambda bucket: bucket_rate(bucket, 8.5),
        )
        client = make_client(sb.base_url, limiter=limiter, max_rate_limit_waits=0)
        client.create_product(_product("BASE"))
        client.create_variation("BASE", {"sku": "BASE-P", "qty": 1})

        errors: list[SkyHubError] = []
        for _ in range(2):
            try:
                assert client.get_variation("BASE-P")["sku"] == "BASE-P"
            except SkyHubError as exc:
                errors.append(exc)

        reads = [e["status"] for e in sb.request_log() if e["route"] == "/variations/{sku}"]
        assert reads == [200, 200], f"GET /variations answers {reads}; raised {errors}"
        assert errors == []


@pytest.mark.parametrize(
    ("method", "path", "bucket"),
    [
        ("GET", "/products", "products:GET"),
        ("GET", "/products?page=2&per_page=25", "products:GET"),
        ("POST", "/products", "products:POST"),
        ("GET", "/products/CAMISA%201", "products:GET"),
        ("PUT", "/products/CAMISA%201", "products:PUT"),
        ("DELETE", "/products/CAMISA%201", "products:DELETE"),
        ("POST", "/products/TENIS/variations", "variations:POST"),
        ("GET", "/variations/TENIS%2042", "variations:GET"),
        ("PUT", "/variations/TENIS%2042", "variations:PUT"),
        ("DELETE", "/variations/TENIS%2042", "variations:DELETE"),
        ("GET", "/orders", "orders:GET:list"),
        ("GET", "/orders?page=2", "orders:GET:list"),
        ("GET", "/orders/Lojas%20Americanas-1517940500554-01", "orders:GET:one"),
        ("POST", "/orders", "orders:POST"),
        ("POST", "/orders/Lojas%20Americanas-1-01/invoice", "orders/invoice:POST"),
        ("POST", "/orders/X-1/shipments", "orders/shipments:POST"),
        ("POST", "/orders/X-1/delivery", "orders/delivery:POST"),
        ("POST", "/orders/X-1/cancel", "orders/cancel:POST"),
        ("POST", "/orders/X-1/shipment_exception", "orders/shipment_exception:POST"),
        ("POST", "/orders/X-1/approval", "orders/approval:POST"),
        ("PUT", "/orders/X-1/exported", "orders:PUT"),
        ("GET", "/queues/orders", "queues:GET"),
        ("DELETE", "/queues/orders/Lojas%20Americanas-1-01", "queues:DELETE"),
        ("GET", "/sync_errors/products", "other:sync_errors:GET"),
        ("GET", "/sync_errors/products?error_category_code=x", "other:sync_errors:GET"),
        ("GET", "/statuses", "other:statuses:GET"),
        ("GET", "/freights", "other:freights:GET"),
    ],
)
def test_bucket_for(method: str, path: str, bucket: str) -> None:
    assert bucket_for(method, path) == bucket


def test_the_client_uses_bucket_for_with_the_encoded_path(make_client: Any, sb: Sandbox) -> None:
    taken: list[str] = []

    class Recorder:
        def acquire(self, bucket: str) -> float:
            taken.append(bucket)
            return 0.0

    client = make_client(sb.base_url, limiter=Recorder())
    client.create_product(_product("B"))
    client.create_variation("B", {"sku": "B 1", "qty": 1})
    client.update_variation("B 1", {"qty": 2})
    client.get_product("B")
    sb.seed_order({"code": SPACED_CODE, "status": "payment_received"})
    client.get_order(SPACED_CODE)
    client.invoice_order(SPACED_CODE, NFE_KEY)
    client.next_queued_order()
    client.ack_order(SPACED_CODE)
    client.product_sync_errors()

    assert taken == [
        "products:POST",
        "variations:POST",
        "variations:PUT",
        "products:GET",
        "orders:GET:one",
        "orders/invoice:POST",
        "queues:GET",
        "queues:DELETE",
        "other:sync_errors:GET",
    ]


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/products", "/products"),
        ("/products?cursor=abc", "/products"),
        ("/products/KIT%202%2F3", "/products/{sku}"),
        ("/products/TENIS/variations", "/products/{sku}/variations"),
        ("/variations/TENIS%2042", "/variations/{sku}"),
        ("/orders", "/orders"),
        ("/orders/Lojas%20Americanas-1-01", "/orders/{code}"),
        ("/orders/Lojas%20Americanas-1-01/invoice", "/orders/{code}/invoice"),
        ("/queues/orders", "/queues/orders"),
        ("/queues/orders/Lojas%20Americanas-1-01", "/queues/orders/{code}"),
        ("/sync_errors/products", "/sync_errors/products"),
    ],
)
def test_route_of(path: str, route: str) -> None:
    assert route_of(path) == route


@pytest.mark.slow
def test_request_counter_counts_by_route_and_status(sb: Sandbox, client: SkyHubClient) -> None:
    client.create_product(_product("C 1"))
    client.update_product("C 1", {"qty": 1})
    client.update_product("C 1", {"qty": 2})
    with pytest.raises(NotFound):
        client.get_product("C 2")
    sb.script_fault("PUT", "/products/C 1", "drop")
    with pytest.raises(TransportError):
        client.update_product("C 1", {"qty": 3})
    sb.script_fault("GET", "/queues/orders", "429")
    assert client.next_queued_order() is None  # 429 waited out, then 204

    assert client.counter.take() == {
        ("POST", "/products", "201"): 1,
        ("PUT", "/products/{sku}", "204"): 2,
        ("GET", "/products/{sku}", "404"): 1,
        ("PUT", "/products/{sku}", "error"): 1,
        ("GET", "/queues/orders", "429"): 1,
        ("GET", "/queues/orders", "204"): 1,
    }
    assert client.counter.take() == {}
