"""The outbox contract, row by row: skysync.validation.problems / validate.

Good rows pass untouched; every bad row yields a problem that starts with the field it is about
("payload.price: ...") and says what is wrong. Pure functions: no database here.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skysync.domain import validation
from skysync.domain.kinds import UnreadableJSON
from skysync.domain.validation import MAX_PAYLOAD_BYTES, ValidationFailed, problems, validate

KEY44 = "35261112345678000199550010000012341000012345"
assert len(KEY44) == 44

SHIPMENT = {
    "code": "SHIP-1",
    "items": [{"sku": "SKU-1", "qty": 2}],
    "track": {"code": "BR123456789", "carrier": "Correios"},
}

FULL_PRODUCT = {
    "name": "Camiseta azul",
    "description": "<p>Algodão</p>",
    "status": "enabled",
    "qty": 0,
    "price": 59.9,
    "promotional_price": 49.9,
    "cost": 0,
    "weight": 0.3,
    "height": 2,
    "width": 30,
    "length": 40,
    "brand": "Marca",
    "ean": "7891234567895",
    "nbm": "61091000",
    "categories": [{"code": "10", "name": "Roupas > Camisetas"}],
    "images": ["https://img.example.com/1.jpg", "http://img.example.com/2.jpg"],
    "specifications": [{"key": "Material", "value": "Algodão"}],
    "variation_attributes": ["Tamanho"],
    "variations": [
        {
            "sku": "SKU-1-P",
            "qty": 3,
            "ean": "7891234567896",
            "price": 59.9,
            "promotional_price": 59.9,
            "images": ["https://img.example.com/p.jpg"],
            "specifications": [{"key": "Tamanho", "value": "P"}],
        },
        {"sku": "SKU-1-M", "qty": 0},
    ],
}

GOOD: list[tuple[str, str, str, Any]] = [
    ("price-float", "price", "SKU-1", {"price": 10.5}),
    ("price-int", "price", "SKU-1", {"price": 10}),
    ("price-promo-equal", "price", "SKU-1", {"price": 12.5, "promotional_price": 12.5}),
    ("price-promo-lower", "price", "SKU-1", {"price": 12.5, "promotional_price": 9.99}),
    ("price-promo-null", "price", "SKU-1", {"price": 12.5, "promotional_price": None}),
    ("price-promo-empty", "price", "SKU-1", {"price": 12.5, "promotional_price": ""}),
    ("stock-zero", "stock", "SKU-1", {"qty": 0}),
    ("stock-positive", "stock", "SKU-1-P", {"qty": 125}),
    ("product-full", "product", "SKU-1", FULL_PRODUCT),
    ("product-partial", "product", "SKU-1", {"price": 99.9}),
    (
        "product-null-and-empty-scalars",
        "product",
        "SKU-1",
        {
            "name": None,
            "description": "",
            "status": "",
            "brand": None,
            "ean": "",
            "nbm": None,
            "qty": None,
            "price": "",
            "promotional_price": None,
            "cost": "",
            "weight": None,
            "crossdocking": "",
            "images": None,
            "categories": None,
            "specifications": None,
            "variations": None,
            "variation_attributes": None,
        },
    ),
    # Design rule 3: "" means "no value" for every field, lists included (see the bug report).
    (
        "product-empty-string-lists",
        "product",
        "SKU-1",
        {
            "images": "",
            "categories": "",
            "specifications": "",
            "variations": "",
            "variation_attributes": "",
        },
    ),
    ("cancel-empty", "order_cancel", "ORDER-1", {}),
    ("invoice-no-date", "order_invoice", "ORDER-1", {"key": KEY44}),
    (
        "invoice-date-offset",
        "order_invoice",
        "ORDER-1",
        {"key": KEY44, "issue_date": "2026-11-28T14:30:00-03:00"},
    ),
    (
        "invoice-date-naive",
        "order_invoice",
        "ORDER-1",
        {"key": KEY44, "issue_date": "2026-11-28T14:30:00"},
    ),
    ("shipment-minimal", "order_shipment", "ORDER-1", SHIPMENT),
    (
        "shipment-full",
        "order_shipment",
        "ORDER-1",
        {
            **SHIPMENT,
            "items": [{"sku": "SKU-1-P", "qty": 1}, {"sku": "SKU-2", "qty": 3}],
            "track": {
                "code": "BR123",
                "carrier": "Correios",
                "method": "SEDEX",
                "url": "https://rastreio.example.com/BR123",
            },
            "delivered_carrier_date": "2026-11-28T10:00:00-03:00",
        },
    ),
    (
        "delivery-offset",
        "order_delivery",
        "ORDER-1",
        {"delivered_date": "2026-11-28T14:30:00-03:00"},
    ),
    ("delivery-utc-z", "order_delivery", "ORDER-1", {"delivered_date": "2026-11-28T17:30:00Z"}),
    ("delivery-naive", "order_delivery", "ORDER-1", {"delivered_date": "2026-11-28T14:30:00"}),
    ("delivery-date-only", "order_delivery", "ORDER-1", {"delivered_date": "2026-11-28"}),
    (
        "shipment-exception",
        "order_shipment_exception",
        "ORDER-1",
        {"occurrence_date": "2026-11-28T09:00:00-03:00", "observation": "Destinatário ausente"},
    ),
]


@pytest.mark.parametrize(
    ("kind", "ref", "payload"), [g[1:] for g in GOOD], ids=[g[0] for g in GOOD]
)
def test_good_row_passes_untouched(kind: str, ref: str, payload: Any) -> None:
    before = copy.deepcopy(payload)
    assert problems(kind, ref, payload) == []
    assert validate(kind, ref, payload) is payload
    assert payload == before


# (id, kind, ref, payload, field the problem must start with, a word of the explanation)
BAD: list[tuple[str, Any, Any, Any, str, str]] = [
    ("unknown-kind", "bogus", "SKU-1", {"price": 1}, "kind", "unknown"),
    ("kind-none", None, "SKU-1", {"price": 1}, "kind", "unknown"),
    ("empty-ref", "price", "", {"price": 1}, "ref", "required"),
    ("whitespace-ref", "price", "   ", {"price": 1}, "ref", "required"),
    ("ref-not-string", "price", 123, {"price": 1}, "ref", "required"),
    ("ref-padded", "price", " SKU-1", {"price": 1}, "ref", "spaces"),
    ("ref-too-long", "price", "S" * 256, {"price": 1}, "ref", "long"),
    ("payload-list", "price", "SKU-1", [{"price": 1}], "payload", "object"),
    ("payload-json-string", "price", "SKU-1", '{"price": 1}', "payload", "object"),
    ("payload-number", "price", "SKU-1", 12.5, "payload", "object"),
    ("payload-null", "price", "SKU-1", None, "payload", "object"),
    ("payload-unreadable", "price", "SKU-1", UnreadableJSON("garbage"), "payload", "json"),
    ("price-zero", "price", "SKU-1", {"price": 0}, "payload.price", "greater than 0"),
    ("price-negative", "price", "SKU-1", {"price": -3.5}, "payload.price", "greater than 0"),
    ("price-nan", "price", "SKU-1", {"price": float("nan")}, "payload.price", "finite"),
    ("price-inf", "price", "SKU-1", {"price": float("inf")}, "payload.price", "finite"),
    ("price-comma-string", "price", "SKU-1", {"price": "12,50"}, "payload.price", "number"),
    ("price-dot-string", "price", "SKU-1", {"price": "12.50"}, "payload.price", "number"),
    ("price-boolean", "price", "SKU-1", {"price": True}, "payload.price", "number"),
    ("price-missing", "price", "SKU-1", {"promotional_price": 5}, "payload.price", "required"),
    ("price-null", "price", "SKU-1", {"price": None}, "payload.price", "required"),
    (
        "promo-above-price",
        "price",
        "SKU-1",
        {"price": 10, "promotional_price": 10.01},
        "payload.promotional_price",
        "exceed",
    ),
    (
        "promo-zero",
        "price",
        "SKU-1",
        {"price": 10, "promotional_price": 0},
        "payload.promotional_price",
        "greater than 0",
    ),
    (
        "price-unknown-field",
        "price",
        "SKU-1",
        {"price": 1, "colour": "red"},
        "payload.colour",
        "unknown",
    ),
    ("price-qty-field", "price", "SKU-1", {"price": 1, "qty": 3}, "payload.qty", "unknown"),
    ("qty-negative", "stock", "SKU-1", {"qty": -1}, "payload.qty", ">= 0"),
    ("qty-fraction", "stock", "SKU-1", {"qty": 1.5}, "payload.qty", "whole"),
    ("qty-string", "stock", "SKU-1", {"qty": "3"}, "payload.qty", "whole"),
    ("qty-boolean", "stock", "SKU-1", {"qty": True}, "payload.qty", "whole"),
    ("qty-missing", "stock", "SKU-1", {}, "payload.qty", "required"),
    ("qty-null", "stock", "SKU-1", {"qty": None}, "payload.qty", "required"),
    ("invoice-key-43", "order_invoice", "O-1", {"key": "1" * 43}, "payload.key", "44 digits"),
    ("invoice-key-45", "order_invoice", "O-1", {"key": "1" * 45}, "payload.key", "44 digits"),
    (
        "invoice-key-letters",
        "order_invoice",
        "O-1",
        {"key": "NFe" + "1" * 41},
        "payload.key",
        "44 digits",
    ),
    ("invoice-key-int", "order_invoice", "O-1", {"key": int(KEY44)}, "payload.key", "string"),
    ("invoice-key-missing", "order_invoice", "O-1", {}, "payload.key", "required"),
    (
        "invoice-key-non-ascii-digits",
        "order_invoice",
        "O-1",
        {"key": "\u0663" * 44},  # ARABIC-INDIC DIGIT THREE: not an NF-e key (see the bug report)
        "payload.key",
        "44 digits",
    ),
    (
        "invoice-bad-issue-date",
        "order_invoice",
        "O-1",
        {"key": KEY44, "issue_date": "28/11/2026"},
        "payload.issue_date",
        "iso-8601",
    ),
    (
        "shipment-no-track",
        "order_shipment",
        "O-1",
        {k: v for k, v in SHIPMENT.items() if k != "track"},
        "payload.track",
        "object",
    ),
    (
        "shipment-no-track-code",
        "order_shipment",
        "O-1",
        {**SHIPMENT, "track": {"carrier": "Correios"}},
        "payload.track.code",
        "required",
    ),
    (
        "shipment-no-carrier",
        "order_shipment",
        "O-1",
        {**SHIPMENT, "track": {"code": "BR1"}},
        "payload.track.carrier",
        "required",
    ),
    (
        "shipment-empty-items",
        "order_shipment",
        "O-1",
        {**SHIPMENT, "items": []},
        "payload.items",
        "non-empty",
    ),
    (
        "shipment-item-qty-0",
        "order_shipment",
        "O-1",
        {**SHIPMENT, "items": [{"sku": "SKU-1", "qty": 0}]},
        "payload.items[0].qty",
        ">= 1",
    ),
    (
        "shipment-item-no-sku",
        "order_shipment",
        "O-1",
        {**SHIPMENT, "items": [{"qty": 1}]},
        "payload.items[0].sku",
        "required",
    ),
    (
        "shipment-no-code",
        "order_shipment",
        "O-1",
        {k: v for k, v in SHIPMENT.items() if k != "code"},
        "payload.code",
        "required",
    ),
    (
        "delivery-dd-mm-yyyy",
        "order_delivery",
        "O-1",
        {"delivered_date": "28/11/2026"},
        "payload.delivered_date",
        "iso-8601",
    ),
    (
        "delivery-yesterday",
        "order_delivery",
        "O-1",
        {"delivered_date": "yesterday"},
        "payload.delivered_date",
        "iso-8601",
    ),
    ("delivery-missing", "order_delivery", "O-1", {}, "payload.delivered_date", "required"),
    (
        "delivery-epoch-number",
        "order_delivery",
        "O-1",
        {"delivered_date": 1795000000},
        "payload.delivered_date",
        "string",
    ),
    (
        "exception-no-observation",
        "order_shipment_exception",
        "O-1",
        {"occurrence_date": "2026-11-28T09:00:00-03:00"},
        "payload.observation",
        "required",
    ),
    (
        "exception-blank-observation",
        "order_shipment_exception",
        "O-1",
        {"occurrence_date": "2026-11-28T09:00:00-03:00", "observation": "  "},
        "payload.observation",
        "required",
    ),
    ("cancel-with-field", "order_cancel", "O-1", {"reason": "x"}, "payload.reason", "unknown"),
    (
        "huge-payload",
        "product",
        "SKU-1",
        {"description": "x" * (MAX_PAYLOAD_BYTES + 1)},
        "payload",
        "limit",
    ),
    ("product-status-on", "product", "SKU-1", {"status": "on"}, "payload.status", "enabled"),
    (
        "product-image-not-url",
        "product",
        "SKU-1",
        {"images": ["img/1.jpg"]},
        "payload.images[0]",
        "url",
    ),
    (
        "product-images-not-list",
        "product",
        "SKU-1",
        {"images": "https://img.example.com/1.jpg"},
        "payload.images",
        "list",
    ),
    (
        "product-variation-without-sku",
        "product",
        "SKU-1",
        {"variations": [{"qty": 1}]},
        "payload.variations[0].sku",
        "required",
    ),
    (
        "product-duplicate-variation-sku",
        "product",
        "SKU-1",
        {"variations": [{"sku": "V"}, {"sku": "V"}]},
        "payload.variations[1].sku",
        "duplicates",
    ),
    ("product-unknown-field", "product", "SKU-1", {"title": "x"}, "payload.title", "unknown"),
    ("product-price-zero", "product", "SKU-1", {"price": 0}, "payload.price", "greater than 0"),
    ("product-qty-negative", "product", "SKU-1", {"qty": -2}, "payload.qty", ">= 0"),
    ("product-weight-negative", "product", "SKU-1", {"weight": -1}, "payload.weight", ">= 0"),
    (
        "product-category-no-name",
        "product",
        "SKU-1",
        {"categories": [{"code": "10"}]},
        "payload.categories[0].name",
        "required",
    ),
    (
        "product-spec-no-value",
        "product",
        "SKU-1",
        {"specifications": [{"key": "Cor", "value": ""}]},
        "payload.specifications[0].value",
        "required",
    ),
]


@pytest.mark.parametrize(
    ("kind", "ref", "payload", "field", "word"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_row_names_the_field(kind: Any, ref: Any, payload: Any, field: str, word: str) -> None:
    found = problems(kind, ref, payload)
    matching = [p for p in found if p.startswith(f"{field}: ")]
    assert matching, f"no problem for {field!r} in {found}"
    assert any(word in p.lower() for p in matching), f"{word!r} not explained in {matching}"
    with pytest.raises(ValidationFailed) as excinfo:
        validate(kind, ref, payload)
    assert excinfo.value.problems == found


def test_price_too_big_for_a_float_is_a_problem_not_a_crash() -> None:
    # json.loads('{"price": 1000...0}') yields a Python int; math.isfinite() on it overflows.
    payload = {"price": 10**400}
    found = problems("price", "SKU-1", payload)
    assert any(p.startswith("payload.price: ") for p in found), found


def test_several_problems_are_all_reported() -> None:
    found = problems(
        "price",
        "  ",
        {"price": "12,50", "promotional_price": -1, "colour": "red", "qty": 3},
    )
    fields = {p.split(": ", 1)[0] for p in found}
    assert fields == {
        "ref",
        "payload.price",
        "payload.promotional_price",
        "payload.colour",
        "payload.qty",
    }
    assert len(found) == 5


def test_several_problems_in_a_shipment_are_all_reported() -> None:
    found = problems(
        "order_shipment",
        "O-1",
        {
            "items": [{"sku": "", "qty": 0}, "SKU-2"],
            "track": {"carrier": "Correios", "extra": 1},
            "delivered_carrier_date": "amanhã",
        },
    )
    fields = {p.split(": ", 1)[0] for p in found}
    assert fields == {
        "payload.code",
        "payload.items[0].sku",
        "payload.items[0].qty",
        "payload.items[1]",
        "payload.track.code",
        "payload.track.extra",
        "payload.delivered_carrier_date",
    }


def test_unknown_kind_still_checks_ref_and_payload_shape() -> None:
    found = problems("prices", "", [1, 2])
    assert [p.split(": ", 1)[0] for p in found] == ["kind", "ref", "payload"]


def test_validation_failed_carries_the_list_and_joins_it() -> None:
    payload = {"price": 0, "colour": "red"}
    expected = problems("price", "SKU-1", payload)
    assert len(expected) == 2
    with pytest.raises(ValidationFailed) as excinfo:
        validate("price", "SKU-1", payload)
    exc = excinfo.value
    assert isinstance(exc, ValueError)
    assert exc.problems == expected
    assert str(exc) == "; ".join(expected)
    assert "payload.price: " in str(exc) and "payload.colour: " in str(exc)


def test_problem_messages_do_not_dump_huge_values() -> None:
    found = problems("price", "SKU-1", {"price": "9" * 10_000})
    assert len(found) == 1
    assert len(found[0]) < 200


def test_product_payload_may_carry_its_own_sku() -> None:
    assert problems("product", "SKU-1", {"sku": "SKU-1", "name": "x"}) == []
    assert problems("product", "SKU-1", {"sku": None, "name": "x"}) == []  # null: no value


def test_product_payload_sku_other_than_ref_names_both() -> None:
    (problem,) = problems("product", "SKU-1", {"sku": "SKU-2", "name": "x"})
    assert problem.startswith("payload.sku: ")
    assert '"SKU-2"' in problem and '"SKU-1"' in problem


def test_price_row_still_refuses_a_sku_field() -> None:
    (problem,) = problems("price", "SKU-1", {"price": 1.0, "sku": "SKU-1"})
    assert problem.startswith("payload.sku")


_SCALARS = st.one_of(
    st.text(max_size=40),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=20), _SCALARS, max_size=8))
def test_a_payload_skipped_by_the_size_check_is_really_under_the_limit(
    payload: dict[str, Any],
) -> None:
    """Flat small payloads skip measuring (most of a backlog's rows): the bound must never let
    through a payload the measure would have refused."""
    if validation._flat_and_small(payload):
        assert len(json.dumps(payload, ensure_ascii=False).encode()) <= MAX_PAYLOAD_BYTES
        assert validation.nesting_depth(payload) == 1


def test_a_flat_payload_near_the_limit_is_still_measured() -> None:
    """Escapes count six bytes a character: 50,000 control characters (300,000 bytes as JSON)
    are measured and refused, although the string is short."""
    found = problems("product", "SKU-1", {"description": "\x01" * 50_000})
    assert any("byte limit" in p for p in found), found
    assert not validation._flat_and_small({"qty": 10**30})


# -- plain_stock: the claim's reading of a bare {"qty": n} without parsing it ------------------

_JSON_WS = st.text(alphabet=" \t\n\r", max_size=3)


@settings(max_examples=500, deadline=None)
@given(
    qty=st.one_of(st.integers(0, validation.MAX_QTY + 10), st.integers(0, 10**12)),
    ws=st.lists(_JSON_WS, min_size=4, max_size=4),
)
def test_a_bare_stock_text_reads_as_json_does_and_is_good_exactly_when_problems_says_so(
    qty: int, ws: list[str]
) -> None:
    """The fast reading agrees with the full one: same payload, and taken as good only when
    ``problems`` finds nothing; else None (the claim then parses and checks it in full)."""
    text = f'{{{ws[0]}"qty"{ws[1]}:{ws[2]}{qty}{ws[3]}}}'
    parsed = json.loads(text)
    plain = validation.plain_stock("stock", text)
    if problems("stock", "SKU-1", parsed):
        assert plain is None
    else:
        assert plain == parsed


@pytest.mark.slow
@settings(max_examples=500, deadline=None)
@given(text=st.from_regex(validation._PLAIN_STOCK, fullmatch=True))
def test_every_text_the_fast_reading_takes_is_a_good_stock_payload(text: str) -> None:
    """Whatever the pattern admits parses as JSON to the same payload and has no problem."""
    plain = validation.plain_stock("stock", text)
    if plain is not None:
        assert json.loads(text) == plain
        assert problems("stock", "SKU-1", plain) == []


@settings(max_examples=300, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=6), _SCALARS, max_size=3))
def test_any_other_stock_text_is_left_to_the_full_check(payload: dict[str, Any]) -> None:
    """A payload that is not exactly one integer qty is never read the fast way (as PostgreSQL
    prints jsonb, and as compact JSON), so its problems are always found."""
    for text in (json.dumps(payload), json.dumps(payload, separators=(",", ":"))):
        plain = validation.plain_stock("stock", text)
        if plain is not None:
            assert payload == plain and type(payload["qty"]) is int
            assert problems("stock", "SKU-1", payload) == []


@pytest.mark.parametrize(
    "text",
    [
        '{"qty": -1}',  # below 0: the full check says why
        '{"qty": 5.0}',  # a float: good, but judged by the full check
        '{"qty": 05}',  # not JSON
        '{"qty": 1e3}',
        '{"qty": 2147483648}',  # over SkyHub's 32 bits
        '{"qty": 5, "qty": 6}',  # a duplicate key
        '{"qty": "5"}',
        '{"qty":\u00a05}',  # a no-break space: Python's \s, not JSON's whitespace
        '{"qty": 5}\n{"qty": 6}',
        '{"price": 5}',
    ],
)
def test_texts_that_are_not_a_bare_good_qty_take_the_full_check(text: str) -> None:
    assert validation.plain_stock("stock", text) is None


def test_the_fast_reading_is_for_stock_rows_only() -> None:
    assert validation.plain_stock("stock", '{"qty": 7}') == {"qty": 7}
    assert validation.plain_stock("price", '{"qty": 7}') is None
    assert validation.plain_stock("stock", b'{"qty": 7}') is None


def test_ref_problems_are_those_problems_reports_for_the_ref() -> None:
    for ref in ["", "  ", " SKU-1", "x" * 300, 5, None]:
        found = validation.ref_problems(ref)
        assert found and all(p.startswith("ref: ") for p in found)
        assert [p for p in problems("stock", ref, {"qty": 1}) if p.startswith("ref:")] == found
    assert validation.ref_problems("SKU-1") == []
